"""Core's quantized linear method: any scheme, on any platform, in torch.

It keeps the layer's canonical tensors as loaded (the memory a quantized checkpoint saves)
and dequantizes the weight at every forward: correct everywhere, but slower than a dense
layer. A platform with kernels for a scheme returns its own method from
`LinearMethod.quantized_method`; this one runs the schemes it does not.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform.device import Device
from octavo.platform.linear import LinearMethod
from octavo.quantization.dequant import dequantize, quantize_activations
from octavo.quantization.scheme import GGUF_TYPES, QuantScheme

_QWEIGHT_DTYPES = {"int4": torch.uint8, "int8": torch.int8, "fp8": torch.float8_e4m3fn, "gguf": torch.uint8}


def canonical_shapes(scheme: QuantScheme, in_features: int, out_features: int) -> dict[str, tuple[tuple, torch.dtype]]:
    """The tensors a layer stored in `scheme` holds: name -> (shape, dtype), as scheme.py lays them out."""
    scheme.check_shape(in_features, out_features)
    if scheme.method == "gguf":
        block, nbytes = GGUF_TYPES[str(scheme.gguf_type)]
        return {"qweight": ((out_features, in_features // block * nbytes), torch.uint8)}
    width = in_features // 2 if scheme.method == "int4" else in_features
    groups = scheme.groups(in_features)
    shapes: dict[str, tuple[tuple, torch.dtype]] = {
        "qweight": ((out_features, width), _QWEIGHT_DTYPES[scheme.method]),
        "scales": ((out_features, groups), torch.float32),
    }
    if scheme.zero_point:
        shapes["zeros"] = ((out_features, groups), torch.uint8)
    if scheme.act_order:
        shapes["g_idx"] = ((in_features,), torch.int32)
    return shapes


def register_quantized_weights(layer: nn.Module, scheme: QuantScheme, in_features: int, out_features: int) -> None:
    """The parameters the loader fills for a layer stored in `scheme` (and `bias`, kept as is)."""
    for name, (shape, dtype) in canonical_shapes(scheme, in_features, out_features).items():
        layer.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False))


def quantized_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in layer.named_parameters(recurse=False) if n != "bias"}


class DequantLinearMethod(LinearMethod):
    """Weights kept in `scheme`'s canonical layout; each forward dequantizes them to float32."""

    def __init__(self, device: Device, scheme: QuantScheme) -> None:
        super().__init__(device)
        self.scheme = scheme

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool) -> None:
        register_quantized_weights(layer, self.scheme, in_features, out_features)
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.scheme, quantized_tensors(layer), x.shape[-1])
        xf = quantize_activations(x, self.scheme.activations) if self.scheme.activations else x.float()
        bias = layer.bias
        assert bias is None or isinstance(bias, torch.Tensor)
        y = torch.nn.functional.linear(xf, w, None if bias is None else bias.float())
        return y.to(x.dtype)
