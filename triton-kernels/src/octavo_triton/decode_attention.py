"""Paged attention for decode steps (one query token per request), flash-decoding style.

Decoding reads every cached key and value once and does little arithmetic per byte,
so speed is memory bandwidth, which needs many programs in flight. One program per
(request, KV head) leaves an H100 mostly idle at small batches (batch 1 x 8 KV heads
= 8 programs for 132 SMs), so the key range of each request is split into NUM_SPLITS
chunks handled by separate programs; each writes a partial output normalised by its
own softmax sum plus that sum's log2 (lse), and `_combine_kernel` merges them with
weights 2^(lse_i - max lse). With one split the first kernel writes the output itself.

The QPK query heads of one KV head are the rows of one tile (padded to 16 for
tl.dot), so each key is read once per group, not once per query head. Tiles and the
split-K limits come from the target's entry in `octavo_triton.tuning`.
"""

import functools

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting
from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.paged_tile import attend_tile
from octavo_triton.tuning import Tuning, for_device

LOG2E = 1.4426950408889634


# arguments that change from step to step are not specialized on (Triton would compile a new
# variant whenever an int turns divisible by 16 or equal to 1, or a metadata pointer, a
# view past the batch's decode rows, changes its 16-byte alignment, mid-run)
@triton.jit(do_not_specialize=["window", "num_splits", "stride_bt", "block_tables", "seq_lens"])
def _decode_kernel(
    out,
    part_out,
    part_lse,
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    scale_log2,
    window,
    num_splits,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_block,
    stride_slot,
    stride_kvh,
    stride_bt,
    QPK: tl.constexpr,
    BLOCK_H: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    lo = 0
    if WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    # each split takes a whole number of tiles, so no tile crosses into the next split
    per_split = tl.cdiv(tl.cdiv(seq_len - lo, num_splits), TILE_N) * TILE_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    rows = tl.arange(0, BLOCK_H)
    head = kvh * QPK + rows
    row_ok = rows < QPK
    offs_d = tl.arange(0, HEAD_DIM)
    qv = tl.load(
        q + seq.to(tl.int64) * stride_qt + head[:, None] * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    qv = qv.to(k_cache.dtype.element_ty)

    k_cache += kvh * stride_kvh
    v_cache += kvh * stride_kvh
    bt = block_tables + seq.to(tl.int64) * stride_bt
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    # the query sits at seq_len - 1 and the window starts at lo, so bounding keys to
    # [start, end) is the whole mask: no causal or window test per score
    for start_n in range(start, end, TILE_N):
        acc, m_i, l_i = attend_tile(
            acc,
            m_i,
            l_i,
            qv,
            k_cache,
            v_cache,
            bt,
            start_n,
            end,
            rows,
            window,
            scale_log2,  # rows: unused q_pos
            stride_block,
            stride_slot,
            BLOCK_SIZE,
            TILE_N,
            HEAD_DIM,
            True,
            False,
            False,
            DOT_PRECISION,
            UPCAST,
        )
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split has l = 0 and m = -inf
    acc = acc / l_safe[:, None]
    if SPLIT:
        # part_out: [num_decodes, Hq, num_splits, HEAD_DIM]; part_lse: [num_decodes, Hq, num_splits]
        slot = (seq * tl.num_programs(1) * QPK + head).to(tl.int64) * num_splits + split
        tl.store(part_out + slot[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(part_lse + slot, m_i + tl.log2(l_safe), mask=row_ok)  # -inf when empty
    else:
        o_off = seq.to(tl.int64) * stride_ot + head * stride_oh
        tl.store(out + o_off[:, None] + offs_d[None, :], acc.to(out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _combine_kernel(
    out,
    part_out,
    part_lse,
    num_splits,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    slot0 = (seq * tl.num_programs(1) + head).to(tl.int64) * num_splits
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < num_splits
    lse = tl.load(part_lse + slot0 + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)  # finite: the split holding the last key is never empty
    w = tl.exp2(lse - m)
    o = tl.load(part_out + (slot0 + offs_s)[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    acc = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out + seq.to(tl.int64) * stride_ot + head * stride_oh + offs_d, acc.to(out.dtype.element_ty))


@functools.lru_cache(maxsize=8)
def _compute_units(device: torch.device) -> int:
    """SMs (NVIDIA), CUs (AMD: torch's ROCm build reports them the same way) or Xe-cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "xpu":
        return torch.xpu.get_device_properties(device).gpu_subslice_count
    return 132  # the interpreter: pretend to be an H100 so splits get exercised


def choose_num_splits(
    num_decodes: int, num_kv_heads: int, max_keys: int, device: torch.device, tuning: Tuning | None = None
) -> int:
    """About split_k.programs_per_cu programs per compute unit, each with at least
    split_k.min_keys keys, at most split_k.max_splits splits."""
    split_k = (tuning or for_device(device)).split_k
    programs = max(1, num_decodes * num_kv_heads)
    want = triton.cdiv(split_k.programs_per_cu * _compute_units(device), programs)
    return max(1, min(want, triton.cdiv(max_keys, split_k.min_keys), split_k.max_splits))


def decode_config(head_dim: int, dtype: torch.dtype, tuning: Tuning) -> dict:
    tiles = tuning.tiles(tuning.decode, head_dim, dtype.itemsize)
    return dict(TILE_N=tiles.tile_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def decode_attention(
    out: torch.Tensor,  # [T, Hq, D]; rows 0..num_decodes-1 are written
    q: torch.Tensor,  # [T, Hq, D]; row i is request i's only query token
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [>= num_decodes, max_blocks] int32
    seq_lens: torch.Tensor,  # [>= num_decodes] int32
    num_decodes: int,
    max_seq_len: int,  # an upper bound is fine: it only sizes the split count
    scale: float,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    config: dict | None = None,
    tuning: Tuning | None = None,  # default: the table's entry for q's device
) -> None:
    if num_decodes == 0:
        return
    tuning = tuning or for_device(q.device)
    _, block_size, hk, d = k_cache.shape
    hq = q.shape[1]
    qpk = hq // hk
    max_keys = min(max_seq_len, sliding_window) if sliding_window else max_seq_len
    splits = num_splits or choose_num_splits(num_decodes, hk, max_keys, q.device, tuning)
    cfg = dict(config or decode_config(d, q.dtype, tuning))
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1
    if splits > 1:
        part_out = torch.empty((num_decodes, hq, splits, d), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_decodes, hq, splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    _decode_kernel[(num_decodes, hk, splits)](
        out,
        part_out,
        part_lse,
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale * LOG2E,
        sliding_window or 0,
        splits,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        QPK=qpk,
        BLOCK_H=max(16, triton.next_power_of_2(qpk)),
        BLOCK_SIZE=block_size,
        HEAD_DIM=d,
        WINDOW=bool(sliding_window),
        SPLIT=splits > 1,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else tuning.dot_precision,
        UPCAST=interpreting(),
        **cfg,
        **launch_options(tuning),
    )
    if splits > 1:
        _combine_kernel[(num_decodes, hq)](
            out,
            part_out,
            part_lse,
            splits,
            out.stride(0),
            out.stride(1),
            # one padded width for every split count: one compiled variant, not one per power of two
            HEAD_DIM=d,
            SPLITS_PAD=triton.next_power_of_2(max(splits, tuning.split_k.max_splits)),
            num_warps=tuning.combine_warps,
            **launch_options(tuning),
        )
