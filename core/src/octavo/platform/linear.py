"""The linear method: it owns a linear layer's weights, their layout and the GEMM over them.

Core's models build every projection as an `octavo.layers.linear.Linear` module and hand it
to the method three times: `create_weights` when the module is built (the parameters the
checkpoint loader fills, in the checkpoint's layout), `process_weights_after_loading` once
every weight of the model is in (repack, transpose, quantize, or keep a packed copy: the
method may add attributes to the layer, which it owns), and `apply` for every forward.

Quantized layers: for each scheme a checkpoint stores layers in (octavo.quantization.scheme:
GGUF block types, INT4 with GPTQ/AWQ groups, INT8 and FP8 W8A8, each in one canonical
layout), core asks the platform's method for the method of that scheme
(`quantized_method`), which creates the canonical tensors in `create_weights`, may repack
them into its kernels' layout in `process_weights_after_loading`, and runs its kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform.device import Device
from octavo.quantization.scheme import QuantScheme


class LinearMethod:
    """y = x @ weight.T + bias over weights stored [out_features, in_features], as in
    checkpoints. The default is torch's linear on the weights as loaded."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool) -> None:
        """Register the parameters the checkpoint loader fills: `weight` [out, in] and, with
        `bias`, `bias` [out] (values are set by loading; dtype and device follow the model's)."""
        layer.register_parameter("weight", nn.Parameter(torch.empty(out_features, in_features), requires_grad=False))
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once per layer after every weight of the model is loaded. Default: nothing."""

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features], in x's dtype."""
        weight, bias = layer.weight, layer.bias
        # nn.Module types attributes as Tensor | Module: these are create_weights' parameters
        assert isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
        return torch.nn.functional.linear(x, weight, bias)

    def quantized_method(self, scheme: QuantScheme) -> LinearMethod | None:
        """The method that runs layers stored in `scheme` with this platform's kernels, or
        None (the default) where it has none. For None, core keeps a GGUF layer dense
        (dequantized at load: the dense GEMM is then the fast path) unless the user forced
        --quantization, and runs every other scheme with its own method
        (octavo.quantization.linear.DequantLinearMethod: dequantizes in torch at each forward).
        Raise octavo.quantization.QuantizationError to refuse a scheme, naming what is supported."""
        return None
