"""Give each quantized layer of a built model the linear method of its scheme (before loading).

A model builds every projection with the platform's dense method; quantization then swaps
the method of each Linear that quantized checkpoint layers load into, and the method creates
the canonical tensors of its scheme in place of the dense weight (gpt-fast's way: the model
file does not know about quantization).
"""

from __future__ import annotations

import logging

import torch

from octavo.layers.linear import Linear
from octavo.platform.linear import LinearMethod
from octavo.quantization.checkpoint import QuantConfig
from octavo.quantization.linear import DequantLinearMethod
from octavo.quantization.scheme import QuantizationError, QuantScheme

logger = logging.getLogger("octavo")


def quantize_linears(model, quant: QuantConfig, dense: LinearMethod) -> dict[str, QuantScheme]:
    """Swap the methods of `model`'s quantized Linears; return the checkpoint layers that load
    quantized (the rest, GGUF layers the platform has no kernel for or whose fused partners
    differ, load dequantized)."""
    fed: dict[int, tuple[Linear, dict[str, QuantScheme]]] = {}
    for stem, scheme in quant.layers.items():
        linear = model.linear_for(stem)
        if linear is None:
            raise QuantizationError(
                f"quantized layer {stem!r} of the checkpoint is no linear layer {type(model).__name__} can keep "
                "quantized; pass --dtype to load a GGUF file dequantized"
            )
        fed.setdefault(id(linear), (linear, {}))[1][stem] = scheme
    fused = _stems_per_linear(model)
    kept: dict[str, QuantScheme] = {}
    methods: dict[QuantScheme, LinearMethod | None] = {}
    for linear, stems in fed.values():
        schemes = set(stems.values())
        whole = fused[id(linear)] <= {stem.removeprefix("model.") for stem in stems}
        if len(schemes) != 1 or not whole:
            if quant.format != "gguf":
                raise QuantizationError(
                    f"layers {', '.join(sorted(stems))} share one GEMM but are stored differently; Octavo serves "
                    "fused layers of one scheme"
                )
            continue  # a GGUF's mixed fused layer: dequantized at load
        (scheme,) = schemes
        if quant.format == "gguf" and not quant.forced:
            # measured (docs/quantization.md): octavo-cpu's Q4_1 kernels decode SmolLM2 at ~0.7x its
            # dense bf16 speed, so a GGUF loads dequantized, the fastest way, unless -q gguf asks
            continue
        if scheme not in methods:
            methods[scheme] = dense.quantized_method(scheme)
        method = methods[scheme] or DequantLinearMethod(dense.device, scheme)
        dense_weight = linear.weight
        assert isinstance(dense_weight, torch.Tensor)
        has_bias = linear.bias is not None
        for name in ("weight", "bias"):
            linear._parameters.pop(name, None)
        linear.method = method
        with torch.device(dense_weight.device):  # where the model was built
            method.create_weights(linear, linear.in_features, linear.out_features, has_bias)
        if linear.bias is not None:  # the model's dtype, as the dense layer's bias had
            linear.bias.data = linear.bias.data.to(dense_weight.dtype)
        kept.update(stems)
    if quant.layers:
        logger.info(
            "quantization %s: %d of %d checkpoint layers kept quantized",
            quant.describe(),
            len(kept),
            len(quant.layers),
        )
    return kept


def _stems_per_linear(model) -> dict[int, set[str]]:
    """id(Linear) -> every checkpoint layer that loads into it (q, k and v for a qkv projection)."""
    names = ["lm_head"]
    for i in range(len(model.layers)):
        parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
        names += [f"layers.{i}.{part}" for part in parts + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    per_linear: dict[int, set[str]] = {}
    for name in names:
        linear = model.linear_for(name)
        if linear is not None:
            per_linear.setdefault(id(linear), set()).add(name)
    return per_linear
