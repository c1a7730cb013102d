"""Paged varlen attention for query chunks of any length (prefill, chunked prefill).

Flash-attention style: one program owns BLOCK_Q query tokens of one request and all
QPK query heads that share one KV head, stacked as BLOCK_M = BLOCK_Q * QPK rows, so
each key/value tile loaded from the cache serves the whole GQA group. Query rows are
the last q_len positions of the request's seq_len context, so the causal diagonal is
offset by ctx = seq_len - q_len. Not causal (encoders), every row sees the whole context.

The grid is sized without reading q_len on the host (no device sync, graph friendly):
program b of axis 0 finds its request by binary search over query_start_loc, using
the fact that request i's q-blocks fit in [qsl[i] // BLOCK_Q + i, qsl[i+1] // BLOCK_Q
+ i + 1); programs that land past a request's last q-block return at once. (The same
trick as vLLM's unified Triton attention.) Tiles come from the target's entry in
`octavo_triton.tuning`.
"""

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting
from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.paged_tile import attend_tile
from octavo_triton.tuning import Tuning, for_device

LOG2E = 1.4426950408889634


@triton.jit
def _find_request(query_start_loc, block_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest i with (qsl[i] - qsl[0]) // BLOCK_Q + i <= block_idx."""
    q0 = tl.load(query_start_loc)
    # typed, so that the loop-carried bounds stay int32 tensors in compiled code
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = (tl.load(query_start_loc + mid) - q0) // BLOCK_Q + mid
        if first_block <= block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# num_seqs is a loop bound: Triton would specialise a value of 1 into a constant
# arguments that change from step to step are not specialized on (a new compile each time
# an int turns divisible by 16 or equal to 1, or a metadata pointer, a view past the batch's
# decode rows, changes its 16-byte alignment)
@triton.jit(do_not_specialize=["num_seqs", "window", "stride_bt", "block_tables", "seq_lens", "query_start_loc"])
def _prefill_kernel(
    out,
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    query_start_loc,
    num_seqs,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_block,
    stride_slot,
    stride_kvh,
    stride_bt,
    QPK: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    # heavy first: the last q-blocks of a request see the most keys; starting them
    # first leaves the light ones to fill the final wave
    block_idx = tl.num_programs(0) - 1 - tl.program_id(0)
    kvh = tl.program_id(1)
    seq = _find_request(query_start_loc, block_idx, num_seqs, BLOCK_Q)
    q_base = tl.load(query_start_loc)
    q_start = tl.load(query_start_loc + seq)
    q_len = tl.load(query_start_loc + seq + 1) - q_start
    qb = block_idx - ((q_start - q_base) // BLOCK_Q + seq)
    if qb * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    ctx = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    tok = qb * BLOCK_Q + rows // QPK  # token index within the request's chunk
    head = kvh * QPK + rows % QPK
    row_ok = (rows // QPK < BLOCK_Q) & (tok < q_len)
    q_pos = ctx + tok
    offs_d = tl.arange(0, HEAD_DIM)
    q_off = (q_start + tok).to(tl.int64) * stride_qt + head * stride_qh
    qv = tl.load(q + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    qv = qv.to(k_cache.dtype.element_ty)

    first_pos = ctx + qb * BLOCK_Q
    last_pos = ctx + tl.minimum((qb + 1) * BLOCK_Q, q_len) - 1
    lo = 0
    if WINDOW:
        lo = tl.maximum(first_pos - window + 1, 0) // TILE_N * TILE_N
    if CAUSAL:
        # tiles wholly at or before every row's diagonal need no causal or bound mask
        mid = lo + (first_pos + 1 - lo) // TILE_N * TILE_N
        hi = last_pos + 1
    else:
        # every row sees the whole context: whole tiles need no mask, the last one its bound
        mid = seq_len // TILE_N * TILE_N
        hi = seq_len

    k_cache += kvh * stride_kvh
    v_cache += kvh * stride_kvh
    bt = block_tables + seq.to(tl.int64) * stride_bt
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, mid, TILE_N):
        acc, m_i, l_i = attend_tile(
            acc,
            m_i,
            l_i,
            qv,
            k_cache,
            v_cache,
            bt,
            start_n,
            hi,
            q_pos,
            window,
            scale_log2,
            stride_block,
            stride_slot,
            BLOCK_SIZE,
            TILE_N,
            HEAD_DIM,
            False,
            False,
            WINDOW,
            DOT_PRECISION,
            UPCAST,
        )
    for start_n in range(mid, hi, TILE_N):
        acc, m_i, l_i = attend_tile(
            acc,
            m_i,
            l_i,
            qv,
            k_cache,
            v_cache,
            bt,
            start_n,
            hi,
            q_pos,
            window,
            scale_log2,
            stride_block,
            stride_slot,
            BLOCK_SIZE,
            TILE_N,
            HEAD_DIM,
            True,
            CAUSAL,
            WINDOW,
            DOT_PRECISION,
            UPCAST,
        )
    # every valid row sees at least its own position, so l > 0 there
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_off = (q_start + tok).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(out + o_off[:, None] + offs_d[None, :], acc.to(out.dtype.element_ty), mask=row_ok[:, None])


def prefill_config(head_dim: int, dtype: torch.dtype, qpk: int, max_query_len: int, tuning: Tuning) -> dict:
    """The table's tiles for this input. BLOCK_M shrinks for short chunks so a batch of
    2-token chunks does not pay for 128 rows; tl.dot needs at least 16 rows and columns."""
    tiles = tuning.tiles(tuning.prefill, head_dim, dtype.itemsize)
    block_m = max(16, triton.next_power_of_2(qpk))
    block_m = max(block_m, min(tiles.block_m, triton.next_power_of_2(max(1, max_query_len) * qpk)))
    return dict(BLOCK_M=block_m, TILE_N=tiles.tile_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages)


def prefill_attention(
    out: torch.Tensor,  # [T, Hq, D], written at the rows of these requests
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hk, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32, rows of these requests only
    seq_lens: torch.Tensor,  # [B] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32, absolute rows of q
    num_tokens: int,  # query_start_loc[B] - query_start_loc[0]
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    config: dict | None = None,
    tuning: Tuning | None = None,  # default: the table's entry for q's device
    causal: bool = True,  # False: every query sees its request's whole context (encoders)
) -> None:
    assert causal or not sliding_window, "a sliding window needs causal attention"
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0:
        return
    tuning = tuning or for_device(q.device)
    _, block_size, hk, d = k_cache.shape
    hq = q.shape[1]
    qpk = hq // hk
    cfg = dict(config or prefill_config(d, q.dtype, qpk, max_query_len, tuning))
    block_m = cfg.pop("BLOCK_M")
    block_q = block_m // qpk
    assert block_q >= 1 and q.stride(-1) == 1 and k_cache.stride(-1) == 1
    grid = (num_tokens // block_q + num_seqs, hk)
    _prefill_kernel[grid](
        out,
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        num_seqs,
        scale * LOG2E,
        sliding_window or 0,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        QPK=qpk,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_SIZE=block_size,
        HEAD_DIM=d,
        WINDOW=bool(sliding_window),
        CAUSAL=causal,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else tuning.dot_precision,
        UPCAST=interpreting(),
        **cfg,
        **launch_options(tuning),
    )
