"""Neox-style (rotate-half) rotary embedding for q and k in one launch.

Same numbers as `Platform.rotary`: the first rot_dim features of each head are split
into halves (x1, x2) and become (x1 cos - x2 sin, x2 cos + x1 sin) in float32, then
rounded to the input dtype; features past rot_dim pass through. cos_sin_cache is
[max_pos, rot_dim] float32 = cat(cos, sin). One program per token handles all heads
of q and k, so each token's cos/sin row is read once. Returns new tensors.
"""

import torch
import triton
import triton.language as tl

from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.tuning import Tuning, for_device


@triton.jit
def _rope_heads(
    src,
    dst,
    stride_sh,
    stride_dh,
    cos,
    sin,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    REST_PAD: tl.constexpr,
):
    h = tl.arange(0, HEADS_PAD)[:, None]
    i = tl.arange(0, HALF_PAD)[None, :]
    ok = (h < NUM_HEADS) & (i < HALF)
    x1 = tl.load(src + h * stride_sh + i, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * stride_sh + HALF + i, mask=ok, other=0.0).to(tl.float32)
    ty = dst.dtype.element_ty
    tl.store(dst + h * stride_dh + i, (x1 * cos - x2 * sin).to(ty), mask=ok)
    tl.store(dst + h * stride_dh + HALF + i, (x2 * cos + x1 * sin).to(ty), mask=ok)
    if REST_PAD > 0:  # partial rotary: copy the features it leaves alone
        j = 2 * HALF + tl.arange(0, REST_PAD)[None, :]
        ok_rest = (h < NUM_HEADS) & (j < HEAD_DIM)
        tl.store(dst + h * stride_dh + j, tl.load(src + h * stride_sh + j, mask=ok_rest), mask=ok_rest)


@triton.jit
def _rotary_kernel(
    q,
    k,
    q_out,
    k_out,
    positions,
    cos_sin,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_cs,
    HQ: tl.constexpr,
    HQ_PAD: tl.constexpr,
    HK: tl.constexpr,
    HK_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    REST_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + t).to(tl.int64)
    i = tl.arange(0, HALF_PAD)[None, :]
    cos = tl.load(cos_sin + pos * stride_cs + i, mask=i < HALF, other=0.0)
    sin = tl.load(cos_sin + pos * stride_cs + HALF + i, mask=i < HALF, other=0.0)
    _rope_heads(
        q + t * stride_qt,
        q_out + t * stride_qot,
        stride_qh,
        stride_qoh,
        cos,
        sin,
        HQ,
        HQ_PAD,
        HEAD_DIM,
        HALF,
        HALF_PAD,
        REST_PAD,
    )
    _rope_heads(
        k + t * stride_kt,
        k_out + t * stride_kot,
        stride_kh,
        stride_koh,
        cos,
        sin,
        HK,
        HK_PAD,
        HEAD_DIM,
        HALF,
        HALF_PAD,
        REST_PAD,
    )


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    tuning: Tuning | None = None,  # default: the table's entry for q's device
):
    """q: [T, Hq, D], k: [T, Hk, D], positions: [T] -> new (q, k)."""
    num_tokens, hq, d = q.shape
    hk = k.shape[1]
    rot = cos_sin_cache.shape[-1]
    assert rot % 2 == 0 and rot <= d, f"rot_dim {rot} must be even and <= head_dim {d}"
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cos_sin_cache = cos_sin_cache.contiguous()
    q_out = torch.empty((num_tokens, hq, d), dtype=q.dtype, device=q.device)
    k_out = torch.empty((num_tokens, hk, d), dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = rot // 2
    rest = d - rot
    tuning = tuning or for_device(q.device)
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        q_out,
        k_out,
        positions,
        cos_sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        cos_sin_cache.stride(0),
        HQ=hq,
        HQ_PAD=triton.next_power_of_2(hq),
        HK=hk,
        HK_PAD=triton.next_power_of_2(hk),
        HEAD_DIM=d,
        HALF=half,
        HALF_PAD=triton.next_power_of_2(half),
        REST_PAD=triton.next_power_of_2(rest) if rest else 0,
        num_warps=tuning.rows.rotary_warps,
        **launch_options(tuning),
    )
    return q_out, k_out
