"""GGUF Q4_0, Q4_1 and Q8_0 layers kept quantized on the CPU (csrc/quant_gguf.cpp, the
extension module `octavo_cpu._quant`).

The weights stay in the canonical GGUF layout the loader fills (each output row its blocks
of 32, as llama.cpp stores them): the kernel reads the blocks directly, so nothing is repacked
after loading. Up to `GEMV_MAX_ROWS` rows of x (decodes), the fused kernel decodes each
block once per tile of rows and multiplies it with float32 inputs; past that (prefills), it
dequantizes the layer's weight to float32 (about as much work as one tile's decode) and
torch's GEMM runs, so a prefill pays the dequantization once per layer, not once per row.
Results are the kit's reference semantics (float32 activations, no activation rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import LinearMethod
from octavo.platform.device import Device
from octavo.quantization.linear import register_quantized_weights
from octavo.quantization.scheme import QuantScheme

try:
    from octavo_cpu import _quant
except ImportError:  # a source tree without a build: core's method runs these layers
    _quant = None

#: GGUF type -> the kernel's block type code (csrc/quant_gguf.cpp BlockType)
BLOCK_TYPES = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
#: rows of x up to which the fused GEMV runs; past it, dequantize + torch's GEMM
GEMV_MAX_ROWS = 16


#: the kernels have a vector path for this CPU (AVX-512; read at import, before any test lowers
#: it): without one the portable loop is slower than the dense GEMM on dequantized weights, so
#: the platform offers no method and a GGUF loads dequantized unless --quantization gguf asks
NATIVE = _quant is not None and _quant.isa() == "avx512"


def supports(scheme: QuantScheme) -> bool:
    return NATIVE and scheme.method == "gguf" and scheme.gguf_type in BLOCK_TYPES


class GgufLinearMethod(LinearMethod):
    def __init__(self, device: Device, scheme: QuantScheme) -> None:
        super().__init__(device)
        assert supports(scheme), scheme
        self.scheme = scheme
        self._code = BLOCK_TYPES[str(scheme.gguf_type)]

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool) -> None:
        register_quantized_weights(layer, self.scheme, in_features, out_features)
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert _quant is not None  # supports() was checked when the method was made
        n, k = layer.out_features, layer.in_features
        xf = x.reshape(-1, k).float().contiguous()
        rows = xf.shape[0]
        qweight = layer.qweight
        threads = torch.get_num_threads()
        if rows <= GEMV_MAX_ROWS:
            y = torch.empty(rows, n, dtype=torch.float32)
            _quant.gemv(self._code, qweight.data_ptr(), n, k, xf.data_ptr(), rows, k, y.data_ptr(), n, threads)
        else:
            w = torch.empty(n, k, dtype=torch.float32)
            _quant.dequantize(self._code, qweight.data_ptr(), n, k, w.data_ptr(), threads)
            y = xf @ w.T
        if layer.bias is not None:
            y += layer.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], n)
