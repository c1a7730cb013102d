"""Core's dequantization of the canonical layouts (scheme.py), in torch: what core's default
quantized linear runs, and what a platform without its own kernel for a scheme falls back to.

The kit's `reference_quant` defines the same formats independently, block by block from
their specifications; the conformance suite holds both this and every platform's kernels to it.
"""

from __future__ import annotations

import torch

from octavo.quantization.scheme import QuantScheme

#: the largest magnitude each dynamic activation type represents
ACTIVATION_MAX = {"int8": 127.0, "fp8": 448.0}


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n / 2] -> uint8 [..., n]: byte j holds input 2j (low nibble) and 2j + 1."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)


def _groups_of_inputs(scheme: QuantScheme, in_features: int, g_idx: torch.Tensor | None, device) -> torch.Tensor:
    if scheme.act_order:
        assert g_idx is not None, "an act-order layer holds g_idx"
        return g_idx.long()
    if scheme.group_size is None:
        return torch.zeros(in_features, dtype=torch.long, device=device)
    return torch.arange(in_features, device=device) // scheme.group_size


def dequantize(scheme: QuantScheme, tensors: dict[str, torch.Tensor], in_features: int) -> torch.Tensor:
    """The float32 weight [out, in] of a layer's canonical tensors (`qweight`, `scales`, ...)."""
    q = tensors["qweight"]
    if scheme.method == "gguf":
        import gguf

        kind = gguf.GGMLQuantizationType[str(scheme.gguf_type)]
        return torch.from_numpy(gguf.quants.dequantize(q.cpu().numpy(), kind).copy()).to(q.device)
    groups = _groups_of_inputs(scheme, in_features, tensors.get("g_idx"), q.device)
    scales = tensors["scales"].float()[:, groups]
    if scheme.method == "int4":
        values = unpack_int4(q).float()
        zeros = tensors["zeros"].float()[:, groups] if scheme.zero_point else 8.0
        return (values - zeros) * scales
    return q.float() * scales


def quantize_activations(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x rounded as a W8A8 layer feeds it to its GEMM, returned dequantized in float32: each
    token scaled by max|x_t| / qmax, rounded to int8 (half to even) or cast to fp8 e4m3."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / ACTIVATION_MAX[kind]
    if kind == "int8":
        q = torch.round(x / scale).clamp(-127, 127)
    else:
        q = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return q * scale
