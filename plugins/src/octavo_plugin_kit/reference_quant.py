"""The reference dequantization of every quantized layout core serves, and the quantized
linear over it: the definition a platform's quantized kernels are held to.

Written from the formats' specifications, independently of core's own dequantization
(`octavo.quantization.dequant`): the GGUF block types follow llama.cpp's `dequantize_row_*`
(ggml-quants.c) loop by loop, vectorized over blocks only; the INT4 / INT8 / FP8 layouts are
the canonical ones `octavo.quantization.scheme` describes. Everything is float32.
"""

from __future__ import annotations

import torch

from octavo.quantization.scheme import GGUF_TYPES, QuantScheme

__all__ = ["dequantize", "dequantize_gguf", "quantize_activation_blocks", "quantize_activations", "quantized_linear"]


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian float16 at byte `offset` of each block, as float32 [n]."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float().squeeze(1)


def _scale_min_k4(j: int, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 bytes `q`."""
    q = q.long()
    if j < 4:
        return q[:, j] & 63, q[:, j + 4] & 63
    return (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4), (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d, qs = _f16(b, 0)[:, None], b[:, 2:18].long()
    return torch.cat([((qs & 0xF) - 8) * d, ((qs >> 4) - 8) * d], dim=1)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m, qs = _f16(b, 0)[:, None], _f16(b, 2)[:, None], b[:, 4:20].long()
    return torch.cat([(qs & 0xF) * d + m, (qs >> 4) * d + m], dim=1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:34].contiguous().view(torch.int8).float() * _f16(b, 0)[:, None]


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qs = _f16(b, 0)[:, None], _f16(b, 2)[:, None], b[:, 4:16], b[:, 16:144].long()
    out = []
    for j in range(4):  # 64 values per step: 32 low nibbles, then 32 high ones, of 32 bytes
        q = qs[:, 32 * j : 32 * j + 32]
        sc1, m1 = _scale_min_k4(2 * j, scales)
        sc2, m2 = _scale_min_k4(2 * j + 1, scales)
        out.append(d * sc1[:, None] * (q & 0xF) - dmin * m1[:, None])
        out.append(d * sc2[:, None] * (q >> 4) - dmin * m2[:, None])
    return torch.cat(out, dim=1)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    d, dmin, scales = _f16(b, 0)[:, None], _f16(b, 2)[:, None], b[:, 4:16]
    qh, qs = b[:, 16:48].long(), b[:, 48:176].long()
    out = []
    for j in range(4):
        q = qs[:, 32 * j : 32 * j + 32]
        u1, u2 = 1 << (2 * j), 2 << (2 * j)  # the fifth bit of each half, in qh
        sc1, m1 = _scale_min_k4(2 * j, scales)
        sc2, m2 = _scale_min_k4(2 * j + 1, scales)
        out.append(d * sc1[:, None] * ((q & 0xF) + torch.where(qh & u1 != 0, 16, 0)) - dmin * m1[:, None])
        out.append(d * sc2[:, None] * ((q >> 4) + torch.where(qh & u2 != 0, 16, 0)) - dmin * m2[:, None])
    return torch.cat(out, dim=1)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    ql, qh = b[:, 0:128].long(), b[:, 128:192].long()
    sc, d = b[:, 192:208].contiguous().view(torch.int8).float(), _f16(b, 208)[:, None]
    out = torch.empty(b.shape[0], 256)
    for n in range(2):  # 128 values per half block
        lo, hi, s, y = ql[:, 64 * n : 64 * n + 64], qh[:, 32 * n : 32 * n + 32], sc[:, 8 * n :], 128 * n
        for k in range(32):  # llama.cpp's loop variable l
            i = k // 16
            q1 = ((lo[:, k] & 0xF) | (((hi[:, k] >> 0) & 3) << 4)) - 32
            q2 = ((lo[:, k + 32] & 0xF) | (((hi[:, k] >> 2) & 3) << 4)) - 32
            q3 = ((lo[:, k] >> 4) | (((hi[:, k] >> 4) & 3) << 4)) - 32
            q4 = ((lo[:, k + 32] >> 4) | (((hi[:, k] >> 6) & 3) << 4)) - 32
            out[:, y + k] = d[:, 0] * s[:, i] * q1
            out[:, y + k + 32] = d[:, 0] * s[:, i + 2] * q2
            out[:, y + k + 64] = d[:, 0] * s[:, i + 4] * q3
            out[:, y + k + 96] = d[:, 0] * s[:, i + 6] * q4
    return out


_GGUF = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def dequantize_gguf(gguf_type: str, qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, blocks * block_bytes] of GGUF type `gguf_type` -> float32 [rows, blocks * block]."""
    block, nbytes = GGUF_TYPES[gguf_type]
    rows = qweight.shape[0]
    blocks = qweight.cpu().reshape(-1, nbytes)
    return _GGUF[gguf_type](blocks).reshape(rows, -1)


def dequantize(scheme: QuantScheme, tensors: dict[str, torch.Tensor], in_features: int) -> torch.Tensor:
    """float32 [out, in]: w[o, i] = (q[o, i] - zero[o, g(i)]) * scales[o, g(i)] (scheme.py)."""
    q = tensors["qweight"].cpu()
    if scheme.method == "gguf":
        return dequantize_gguf(str(scheme.gguf_type), q)
    if scheme.act_order:
        group_of = tensors["g_idx"].cpu().long()
    elif scheme.group_size:
        group_of = torch.arange(in_features) // scheme.group_size
    else:
        group_of = torch.zeros(in_features, dtype=torch.long)
    scales = tensors["scales"].cpu().float()[:, group_of]
    if scheme.method == "int4":
        values = torch.empty(q.shape[0], in_features)
        values[:, 0::2] = (q & 0x0F).float()
        values[:, 1::2] = (q >> 4).float()
        zeros = tensors["zeros"].cpu().float()[:, group_of] if scheme.zero_point else torch.full_like(scales, 8.0)
        return (values - zeros) * scales
    return q.float() * scales  # int8 (zero 0) and fp8


def quantize_activations(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Dynamic per-token quantization, dequantized: token t is scaled by max|x_t| / qmax
    (127 for int8, rounded half to even; 448 for fp8 e4m3, rounded by the cast)."""
    x = x.float()
    qmax = 127.0 if kind == "int8" else 448.0
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    if kind == "int8":
        return torch.round(x / scale).clamp(-qmax, qmax) * scale
    return (x / scale).clamp(-qmax, qmax).to(torch.float8_e4m3fn).float() * scale


def quantize_activation_blocks(x: torch.Tensor) -> torch.Tensor:
    """x [T, in] rounded as llama.cpp's GGUF dot products round activations, dequantized: per
    block of 32 inputs, integers round-half-to-even(x * (127 / max|x|)) times the scale
    max|x| / 127 (float32 operations in that order; a zero block stays zero). A GGUF method may
    run on these instead of x (the conformance check accepts either)."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inv) * (amax / 127.0)).reshape(x.shape)


def quantized_linear(
    x: torch.Tensor, scheme: QuantScheme, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 x [T, in] (activations quantized first for W8A8 schemes) @ dequantized w.T + b."""
    w = dequantize(scheme, tensors, x.shape[-1])
    xf = quantize_activations(x, scheme.activations) if scheme.activations else x.float()
    y = xf.cpu() @ w.T
    return y if bias is None else y + bias.float().cpu()
