"""The CPU's linear method: which kernel runs a linear layer, and the weights' layout it reads.

One routing rule (`linear_path`), used by every linear and by the one-call decode step
(decode_forward.py): weights of a dtype the packed GEMM serves at the running ISA level
(`gemm.packs`: bf16 at every level) are packed once, after loading, for the native GEMM
(`gemm`), which takes them at every row count; with its threads splitting the weight's
panels it streams the packed weights faster than the GEMV reads row-major ones even at one
row (SmolLM2's 30 layers from memory, 2 threads, avx512_bf16: M = 1 5.5 against 6.3 ms,
M = 4 5.8 against 12.8, M = 8 7.2 against 14.0; docs/cpu.md). Other weights keep the
checkpoint's layout: the native GEMV up to `GEMV_MAX_ROWS` rows of x, past which oneDNN's
blocked GEMM (torch's linear) catches up.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import LinearMethod
from octavo.quantization.scheme import QuantScheme
from octavo_cpu import _native, gemm, quantized_linear

#: rows of x up to which the native GEMV serves a linear that is not packed
GEMV_MAX_ROWS = 8


def linear_path(packed: bool, dtype: torch.dtype, rows: int) -> str | None:
    """The native kernel for `rows` rows of x in `dtype`: "gemm" (packed weights, any row
    count), "gemv", or None for torch's linear."""
    if packed:
        return "gemm"
    if _native.available() and dtype in _native.SUPPORTED_DTYPES and rows <= GEMV_MAX_ROWS:
        return "gemv"
    return None


class CpuLinearMethod(LinearMethod):
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # Pack for the GEMM now, not in the first request (~0.4 s for SmolLM2). Once packed,
        # nothing reads the [out, in] weight: the layer lets go of it, so the packed copy
        # replaces it in memory instead of doubling it (a tied lm_head's weight stays alive
        # as the embedding). The packed copy is a parameter of the layer, as the weight was,
        # so the model's parameters still count its weights' memory.
        packed = None
        w, b = layer.weight, layer.bias
        if gemm.packs(w.dtype) and (b is None or b.dtype == w.dtype):
            packed = nn.Parameter(gemm.pack(w), requires_grad=False)
            layer.weight = None
            layer.packed_layout = gemm.layout(w.dtype)  # the ISA level's: checked at every call
        layer.register_parameter("packed_weight", packed)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if layer.packed_weight is not None:
            w = layer.packed_weight
            if layer.packed_layout != gemm.layout(w.dtype):
                raise RuntimeError(
                    f"this layer's weights were packed as {layer.packed_layout}, but the CPU kernels now run "
                    f"{gemm.layout(w.dtype)}: choose the ISA level (OCTAVO_CPU_ISA) before loading the model"
                )
            return gemm.linear(x.to(w.dtype), w, layer.out_features, layer.bias).to(x.dtype)
        w, b = layer.weight, layer.bias
        same = w.dtype == x.dtype and (b is None or b.dtype == x.dtype)
        if same and linear_path(False, x.dtype, x.numel() // max(x.shape[-1], 1)) == "gemv":
            return _native.linear(x, w, b)
        return torch.nn.functional.linear(x, w, b)

    def quantized_method(self, scheme: QuantScheme) -> LinearMethod | None:
        # GGUF Q4_0 / Q4_1 / Q8_0 run natively (quantized_linear.py); other schemes core's method
        if quantized_linear.supports(scheme):
            return quantized_linear.GgufLinearMethod(self.device, scheme)
        return None
