"""Quantized linear methods of the Triton GPUs, for the canonical layouts of
octavo.quantization.scheme (`quantized_method` picks one per scheme):

- int4 weight-only (GPTQ, AWQ, compressed-tensors): the Triton kernels of int4_linear.py.
- fp8 W8A8 with one scale per output row (per-channel, or per-tensor spread per row) on a GPU
  with fp8 tensor cores (compute capability 8.9+): each token's activations rounded to fp8
  with a dynamic per-token scale, then torch._scaled_mm with row-wise scales (cuBLASLt).
- int8 W8A8 (per-channel): the activations rounded to int8 per token, torch._int_mm (int32
  accumulation), both scales applied after.

Other schemes (GGUF types, fp8 with block scales) return None: core runs them with its
dequantizing method. Activation rounding follows the kit's reference (reference_quant).
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import LinearMethod
from octavo.platform.device import Device
from octavo.quantization.dequant import ACTIVATION_MAX
from octavo.quantization.linear import quantized_tensors, register_quantized_weights
from octavo.quantization.scheme import QuantScheme


def quantized_method(device: Device, scheme: QuantScheme) -> LinearMethod | None:
    if scheme.method == "int4":
        return Int4LinearMethod(device, scheme)
    if scheme.method == "fp8" and scheme.group_size is None and _has_fp8_mm():
        return Fp8LinearMethod(device, scheme)
    if scheme.method == "int8" and scheme.activations == "int8":
        return Int8LinearMethod(device, scheme)
    return None


def _has_fp8_mm() -> bool:
    # NVIDIA's fp8 tensor cores (Ada, Hopper and later); ROCm's torch reports gfx versions here
    # and its fp8 is another type (e4m3fnuz): core's method serves it until someone checks it
    return torch.cuda.is_available() and torch.version.hip is None and torch.cuda.get_device_capability() >= (8, 9)


class _QuantizedMethod(LinearMethod):
    def __init__(self, device: Device, scheme: QuantScheme) -> None:
        super().__init__(device)
        self.scheme = scheme

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool) -> None:
        register_quantized_weights(layer, self.scheme, in_features, out_features)
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None)


class Int4LinearMethod(_QuantizedMethod):
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from octavo_triton.int4_linear import int4_linear

        t = quantized_tensors(layer)
        bias = layer.bias
        return int4_linear(
            x,
            t["qweight"],
            t["scales"],
            t.get("zeros"),
            t.get("g_idx"),
            self.scheme.group_size,
            None if bias is None else bias.to(x.dtype),
        )


def _per_token(x2: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x rounded per token as reference_quant.quantize_activations does: (values, scales [M, 1])."""
    xf = x2.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / ACTIVATION_MAX[kind]
    if kind == "int8":
        return torch.round(xf / scale).clamp(-127, 127).to(torch.int8), scale
    return (xf / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


class Fp8LinearMethod(_QuantizedMethod):
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # _scaled_mm takes the weight column-major ([K, N] with stride 1 along K): a transposed view
        layer.scale_row = nn.Parameter(layer.scales.float().reshape(1, -1).contiguous(), requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.scheme.activations == "fp8" and x.dtype != torch.float32:
            xq, sx = _per_token(x2, "fp8")
            y = torch._scaled_mm(
                xq, layer.qweight.T, scale_a=sx, scale_b=layer.scale_row, out_dtype=torch.bfloat16
            ).float()
        elif self.scheme.activations == "fp8":  # float32 in: _scaled_mm's row-wise scales give bf16 out only
            xq, sx = _per_token(x2, "fp8")
            y = (xq.float() * sx) @ (layer.qweight.float() * layer.scales.float()).T
        else:  # weight-only fp8: dequantize the weight (one scale per row) into x's dtype
            y = x2.float() @ (layer.qweight.float() * layer.scales.float()).T
        if layer.bias is not None:
            y = y + layer.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


class Int8LinearMethod(_QuantizedMethod):
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        xq, sx = _per_token(x2, "int8")
        rows = xq.shape[0]
        if rows <= 16:  # torch._int_mm needs more than 16 rows: pad the decode's few
            xq = torch.cat([xq, xq.new_zeros(17 - rows, xq.shape[1])])
        acc = torch._int_mm(xq, layer.qweight.T)[:rows]
        y = acc.float() * sx * layer.scales.float().reshape(1, -1)
        if layer.bias is not None:
            y = y + layer.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)
