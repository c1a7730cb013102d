"""Store new keys and values into the paged cache at their slots (slot -1 = skip).

One program per token moves all its KV heads: a token's keys are Hk * D contiguous
elements in the cache (default layout), so the store is one coalesced row. k and v
may be strided views of a fused qkv projection; only their last dim must be dense.
"""

import torch
import triton
import triton.language as tl

from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.tuning import Tuning, for_device


@triton.jit
def _write_kv_kernel(
    k,
    v,
    k_cache,
    v_cache,
    slot_mapping,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_slot,
    stride_head,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    t = tl.program_id(0)
    slot = tl.load(slot_mapping + t).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HEAD_DIM)[None, :]
    ok = h < NUM_HEADS
    t64 = t.to(tl.int64)
    dst = slot * stride_slot + h * stride_head + d
    kt = tl.load(k + t64 * stride_kt + h * stride_kh + d, mask=ok)
    tl.store(k_cache + dst, kt.to(k_cache.dtype.element_ty), mask=ok)
    vt = tl.load(v + t64 * stride_vt + h * stride_vh + d, mask=ok)
    tl.store(v_cache + dst, vt.to(v_cache.dtype.element_ty), mask=ok)


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    tuning: Tuning | None = None,  # default: the table's entry for k's device
) -> None:
    """k, v: [T, Hk, D]; k_cache, v_cache: [num_blocks, block_size, Hk, D]."""
    num_tokens, hk, d = k.shape
    if num_tokens == 0:
        return
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    # slots index the (block, offset) pair flattened, which needs those two dims adjacent
    assert k_cache.stride(0) == k_cache.shape[1] * k_cache.stride(1) and k_cache.stride(-1) == 1
    assert v_cache.stride() == k_cache.stride()
    tuning = tuning or for_device(k.device)
    _write_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(1),
        k_cache.stride(2),
        NUM_HEADS=hk,
        HEADS_PAD=triton.next_power_of_2(hk),
        HEAD_DIM=d,
        num_warps=tuning.rows.kv_write_warps[hk * d >= 2048],
        **launch_options(tuning),
    )
