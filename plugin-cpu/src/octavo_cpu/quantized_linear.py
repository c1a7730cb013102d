"""GGUF Q4_0, Q4_1 and Q8_0 layers kept quantized on the CPU (csrc/quant_gguf.cpp, the
extension module `octavo_cpu._quant`).

The weights stay in the canonical GGUF layout the loader fills (each output row its blocks
of 32, as llama.cpp stores them): the kernel reads the blocks directly, so nothing is repacked
after loading. Up to `GEMV_MAX_ROWS` rows of x (decodes), the kernel rounds each row of x to
int8 blocks of 32 with a float32 scale (as llama.cpp's Q8 activations) and multiplies in
integers (AVX-512 VNNI, or AVX2): results are the kit's reference on the rounded activations
(reference_quant.quantize_activation_blocks). Past that (prefills), it dequantizes the layer's
weight to float32 and torch's GEMM runs on x unrounded, so a prefill pays the dequantization
once per layer.

OCTAVO_CPU_ISA lowers these kernels too: avx2 runs the AVX2 path, generic the portable one
(slower than the dense GEMM, so the platform then offers no method for GGUF layers).
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import LinearMethod
from octavo.platform.device import Device
from octavo.quantization.linear import register_quantized_weights
from octavo.quantization.scheme import QuantScheme
from octavo_cpu._native import requested_isa

try:
    from octavo_cpu import _quant
except ImportError:  # a source tree without a build: core's method runs these layers
    _quant = None

#: GGUF type -> the kernel's block type code (csrc/quant_gguf.cpp BlockType)
BLOCK_TYPES = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
#: rows of x up to which the fused GEMV runs; past it, dequantize + torch's GEMM
GEMV_MAX_ROWS = 16


def _isa_for(requested: str) -> str:
    """The module's level for an OCTAVO_CPU_ISA level: the AVX-512 ones run its VNNI path where the CPU has it."""
    if requested.startswith("avx512") or requested == "amx":
        return _quant.supported_isas()[-1] if _quant is not None else requested
    return requested


if _quant is not None and requested_isa():
    _quant.set_isa(_isa_for(str(requested_isa())))

#: the kernels have a vector path here (read at import, before any test lowers it): without one
#: the portable loop is slower than the dense GEMM on dequantized weights, so the platform offers
#: no method and a GGUF loads dequantized unless --quantization gguf asks
NATIVE = _quant is not None and _quant.isa() != "generic"


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
