"""The linear method of the Triton GPUs: the checkpoint's [out, in] weights as loaded;
octavo_triton's GEMV for one row of x, torch's linear for more (cuBLAS on NVIDIA, hipBLASLt
on ROCm, oneDNN on Intel: torch picks the vendor's library for the device)."""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import LinearMethod
from octavo.quantization.scheme import QuantScheme

#: most rows of x that take the Triton GEMV (measured on an H100, plugin-cuda/scripts/gemv_bench.py:
#: it streams weights at 2.6-3.1 TB/s where cuBLAS reaches 2.0-2.9 for one row; at 2 rows it is
#: level with cuBLAS, at 4-8 rows 1.6-3x slower; never timed against hipBLASLt or oneDNN)
GEMV_MAX_ROWS = 1


class TritonLinearMethod(LinearMethod):
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.weight, layer.bias
        if (
            x.numel() <= GEMV_MAX_ROWS * x.shape[-1]
            and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype)
        ):
            from octavo_triton.gemv import gemv

            return gemv(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias)

    def quantized_method(self, scheme: QuantScheme) -> LinearMethod | None:
        # INT4 (Triton), FP8 / INT8 W8A8 (torch's scaled / int8 matmuls); others core's method
        from octavo_triton.quantized_linear import quantized_method

        return quantized_method(self.device, scheme)
