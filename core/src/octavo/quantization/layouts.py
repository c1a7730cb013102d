"""Checkpoint layouts -> the canonical layouts of scheme.py, one tensor at a time, as the
weight iterator reads them. Each format's packing is written out where it is unpacked.

`convert(fmt, scheme, suffix, tensor, out_features)` returns (canonical suffix, tensor), or
None for a tensor the canonical layout does not keep (GPTQ's g_idx without act-order,
compressed-tensors' weight_shape).
"""

from __future__ import annotations

import torch

from octavo.quantization.scheme import QuantizationError, QuantScheme

#: AWQ packs output features 8c + AWQ_ORDER[i] into nibble i of word c
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_int32_nibbles(words: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """int32 [..., n] -> uint8 [..., 8n]: element 8c + order[i] is nibble i (bits 4i..4i+3) of word c."""
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
    nibbles = ((words.unsqueeze(-1) >> shifts) & 0xF).to(torch.uint8)  # [..., n, 8], nibble i at index i
    inverse = [order.index(j) for j in range(8)]
    return nibbles[..., inverse].flatten(-2)


def pack_int4_pairs(values: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] (values 0..15) -> uint8 [..., n / 2]: the canonical int4 layout."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).contiguous()


def _rows_first(scales: torch.Tensor, out_features: int) -> torch.Tensor:
    """A scale as stored beside a weight [out, in] -> float32 [out, groups]: a per-tensor scale
    repeated per row, a block scale [ceil(out / b), groups] repeated over its b rows."""
    s = scales.float()
    if s.numel() == 1:
        return s.reshape(1, 1).expand(out_features, 1).contiguous()
    s = s.reshape(s.shape[0], -1)
    if s.shape[0] != out_features:
        rows = -(-out_features // s.shape[0])
        s = s.repeat_interleave(rows, dim=0)[:out_features]
    return s.contiguous()


def _gptq(scheme: QuantScheme, suffix: str, t: torch.Tensor, zeros_offset: int):
    if suffix == "qweight":  # int32 [in / 8, out], input 8r + j at bits 4j of word r
        return "qweight", pack_int4_pairs(unpack_int32_nibbles(t.T.contiguous()))
    if suffix == "qzeros":  # int32 [groups, out / 8], output 8c + j at bits 4j; v1 stores zero - 1
        return "zeros", (unpack_int32_nibbles(t).T + zeros_offset).contiguous()
    if suffix == "scales":
        return "scales", t.float().T.contiguous()
    if suffix == "g_idx":
        return ("g_idx", t.to(torch.int32)) if scheme.act_order else None
    return None


def _awq(suffix: str, t: torch.Tensor):
    if suffix == "qweight":  # int32 [in, out / 8] in AWQ's nibble order
        return "qweight", pack_int4_pairs(unpack_int32_nibbles(t, AWQ_ORDER).T.contiguous())
    if suffix == "qzeros":
        return "zeros", unpack_int32_nibbles(t, AWQ_ORDER).T.contiguous()
    if suffix == "scales":
        return "scales", t.float().T.contiguous()
    return None


def _compressed_tensors(scheme: QuantScheme, suffix: str, t: torch.Tensor, out_features: int):
    if suffix == "weight_packed":
        # int32 [out, in / 8], input 8k + j at bits 4j of word k, signed values stored + 8
        return "qweight", pack_int4_pairs(unpack_int32_nibbles(t))
    if suffix == "weight_zero_point":  # int32 [out / 8, groups] packed along the rows, signed + 8
        return "zeros", unpack_int32_nibbles(t.T.contiguous()).T[:out_features].contiguous()
    if suffix == "weight_scale":
        return "scales", _rows_first(t, out_features)
    if suffix == "weight_g_idx":
        return ("g_idx", t.to(torch.int32)) if scheme.act_order else None
    if suffix == "weight":  # int8 / fp8 values as they are
        return "qweight", t.contiguous()
    if suffix in ("weight_shape", "input_global_scale"):
        return None
    if suffix == "input_scale":
        raise QuantizationError(
            "static activation scales (input_scale) are not supported; supported: dynamic per-token activations"
        )
    return None


def convert(fmt: str, scheme: QuantScheme, suffix: str, t: torch.Tensor, out_features: int, zeros_offset: int = 0):
    """One checkpoint tensor of a quantized layer -> (canonical suffix, tensor) or None (dropped)."""
    if fmt == "gptq":
        return _gptq(scheme, suffix, t, zeros_offset)
    if fmt == "awq":
        return _awq(suffix, t)
    if fmt == "compressed-tensors":
        return _compressed_tensors(scheme, suffix, t, out_features)
    if fmt == "fp8":  # DeepSeek-style: weight_scale_inv is the dequantizing multiplier, per 128 x 128 block
        if suffix == "weight":
            return "qweight", t.contiguous()
        if suffix in ("weight_scale_inv", "weight_scale"):
            return "scales", _rows_first(t, out_features)
        if suffix == "input_scale":
            raise QuantizationError("static fp8 activation scales are not supported; supported: dynamic")
        return None
    raise AssertionError(f"no converter for {fmt}")
