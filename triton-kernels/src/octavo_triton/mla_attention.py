"""Multi-head latent attention (DeepSeek's MLA) over a paged latent cache, and its cache write.

The cache is `[num_blocks, block_size, LATENT + ROPE]`: one entry per token (the compressed
latent, then the rotary key), shared by every head. The model has folded each head's key and
value projections into q and the output (octavo/layers/mla.py), so attention is multi-query
with one 576-feature head (DeepSeek-V2/V3): a head's score is q . entry, its output the
softmax-weighted sum of the entries' latents.

One program takes BLOCK_M rows of one request, a row being a (query token, head) pair: all
heads of a decode token share each entry they read, and a prefill chunk's tokens do too, so
the entries of a tile are loaded once for BLOCK_M rows. Scores are two dots (latent and rotary
parts: neither need be padded to a power of two together), then an online softmax in base 2
and acc += p @ latent. Decode steps split each request's keys across programs as
decode_attention does; `_combine_kernel` merges the partial outputs by their log-sum-exps.
"""

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting
from octavo_triton.decode_attention import LOG2E, choose_num_splits
from octavo_triton.paged_tile import _operand
from octavo_triton.tuning import for_device

# tl.dot needs 16 rows at least; TILE_N x LATENT entries per tile (32 x 512 bf16 = 32 KiB) keep
# the accumulator [16, 512] f32 and one tile in registers with 4 warps
BLOCK_M = 16
TILE_N = 32


@triton.jit(do_not_specialize=["num_splits", "stride_bt", "block_tables", "seq_lens", "query_start_loc"])
def _mla_kernel(
    out,
    part_out,
    part_lse,
    q,
    cache,
    block_tables,
    seq_lens,
    query_start_loc,
    scale_log2,
    num_heads,
    num_splits,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_block,
    stride_slot,
    stride_bt,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    LATENT: tl.constexpr,
    ROPE: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    req = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(query_start_loc + req)
    q_len = tl.load(query_start_loc + req + 1) - q_start
    seq_len = tl.load(seq_lens + req)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len * num_heads
    tok = rows // num_heads
    head = rows % num_heads
    q_pos = seq_len - q_len + tok  # causal: row sees keys <= q_pos
    # keys past the tile's last query are seen by no row: the range to scan (empty for a tile
    # past the request's rows), cut into the splits' whole tiles
    last_tok = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // num_heads, q_len - 1)
    hi = tl.where(tile * BLOCK_M < q_len * num_heads, seq_len - q_len + last_tok + 1, 0)
    per_split = tl.cdiv(tl.cdiv(hi, num_splits), TILE_N) * TILE_N
    start = split * per_split
    end = tl.minimum(start + per_split, hi)

    offs_l = tl.arange(0, LATENT)
    offs_r = tl.arange(0, ROPE)
    q_row = q + (q_start + tok).to(tl.int64) * stride_qt + head * stride_qh
    q_lat = tl.load(q_row[:, None] + offs_l[None, :], mask=row_ok[:, None], other=0.0).to(cache.dtype.element_ty)
    q_pe = tl.load(q_row[:, None] + LATENT + offs_r[None, :], mask=row_ok[:, None], other=0.0)
    q_pe = q_pe.to(cache.dtype.element_ty)

    bt = block_tables + req.to(tl.int64) * stride_bt
    acc = tl.zeros([BLOCK_M, LATENT], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(start, end, TILE_N):
        offs_n = start_n + tl.arange(0, TILE_N)
        n_ok = offs_n < end
        page = tl.load(bt + offs_n // BLOCK_SIZE, mask=n_ok, other=0)
        entry = cache + page.to(tl.int64) * stride_block + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_slot
        lat = tl.load(entry[:, None] + offs_l[None, :], mask=n_ok[:, None], other=0.0)  # [TILE_N, LATENT]
        pe = tl.load(entry[None, :] + LATENT + offs_r[:, None], mask=n_ok[None, :], other=0.0)  # [ROPE, TILE_N]
        s = tl.dot(_operand(q_pe, UPCAST), _operand(pe, UPCAST), input_precision=DOT_PRECISION)
        s = tl.dot(_operand(q_lat, UPCAST), _operand(tl.trans(lat), UPCAST), s, input_precision=DOT_PRECISION)
        s = s * scale_log2
        s = tl.where(n_ok[None, :] & (offs_n[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(
            _operand(p.to(lat.dtype), UPCAST),
            _operand(lat, UPCAST),
            acc * alpha[:, None],
            input_precision=DOT_PRECISION,
        )
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # an empty split has l = 0 and m = -inf
    acc = acc / l_safe[:, None]
    if SPLIT:
        # part_out: [T, num_heads, num_splits, LATENT], part_lse: [T, num_heads, num_splits] (decode_attention's)
        slot = ((q_start + tok) * num_heads + head).to(tl.int64) * num_splits + split
        tl.store(part_out + slot[:, None] * LATENT + offs_l[None, :], acc, mask=row_ok[:, None])
        tl.store(part_lse + slot, m_i + tl.log2(l_safe), mask=row_ok)
    else:
        o_row = out + (q_start + tok).to(tl.int64) * stride_ot + head * stride_oh
        tl.store(o_row[:, None] + offs_l[None, :], acc.to(out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _combine_kernel(
    out, part_out, part_lse, num_splits, stride_ot, stride_oh, LATENT: tl.constexpr, SPLITS_PAD: tl.constexpr
):
    """Row (token, head): the splits' outputs weighted by 2^(lse_i - max lse), over their sum."""
    tok = tl.program_id(0)
    head = tl.program_id(1)
    slot0 = (tok * tl.num_programs(1) + head).to(tl.int64) * num_splits
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_l = tl.arange(0, LATENT)
    s_ok = offs_s < num_splits
    lse = tl.load(part_lse + slot0 + offs_s, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))  # the split holding a row's last key is never empty: max is finite
    o = tl.load(part_out + (slot0 + offs_s)[:, None] * LATENT + offs_l[None, :], mask=s_ok[:, None], other=0.0)
    acc = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out + tok.to(tl.int64) * stride_ot + head * stride_oh + offs_l, acc.to(out.dtype.element_ty))


def mla_attention(
    out: torch.Tensor,  # [T, H, LATENT]
    q: torch.Tensor,  # [T, H, LATENT + ROPE]
    cache: torch.Tensor,  # [num_blocks, block_size, LATENT + ROPE]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_reqs] int32
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    num_reqs: int,
    max_query_len: int,
    max_seq_len: int,  # an upper bound is fine: it only sizes the split count
    scale: float,
    num_splits: int | None = None,
) -> None:
    """Causal latent attention of a varlen batch: request i's queries are the last q_len_i of
    its seq_len_i cached positions. Steps of decodes only split each request's keys."""
    if num_reqs == 0:
        return
    tuning = for_device(q.device)
    t, h, latent = out.shape
    rope = q.shape[-1] - latent
    block_size = cache.shape[1]
    assert q.stride(-1) == 1 and cache.stride(-1) == 1 and out.stride(-1) == 1
    if num_splits is None:
        num_splits = 1
        if max_query_len == 1:
            num_splits = choose_num_splits(num_reqs, triton.cdiv(h, BLOCK_M), max_seq_len, q.device, tuning)
    if num_splits > 1:
        part_out = torch.empty((t, h, num_splits, latent), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((t, h, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    fp32 = q.dtype == torch.float32
    _mla_kernel[(num_reqs, triton.cdiv(max_query_len * h, BLOCK_M), num_splits)](
        out,
        part_out,
        part_lse,
        q,
        cache,
        block_tables,
        seq_lens,
        query_start_loc,
        scale * LOG2E,
        h,
        num_splits,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        cache.stride(0),
        cache.stride(1),
        block_tables.stride(0),
        BLOCK_M=BLOCK_M,
        TILE_N=TILE_N,
        BLOCK_SIZE=block_size,
        LATENT=latent,
        ROPE=rope,
        SPLIT=num_splits > 1,
        DOT_PRECISION="ieee" if fp32 else tuning.dot_precision,
        UPCAST=interpreting(),
        num_warps=8 if fp32 else 4,
        num_stages=2,
    )
    if num_splits > 1:
        _combine_kernel[(t, h)](
            out,
            part_out,
            part_lse,
            num_splits,
            out.stride(0),
            out.stride(1),
            LATENT=latent,
            # one padded width for every split count: one compiled variant, not one per power of two
            SPLITS_PAD=triton.next_power_of_2(max(num_splits, tuning.split_k.max_splits)),
            num_warps=tuning.combine_warps,
        )


@triton.jit
def _write_kernel(
    cache,
    entry,
    slot_mapping,
    stride_s,
    stride_e,
    stride_block,
    stride_slot,
    BLOCK_SIZE: tl.constexpr,
    DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_mapping + t * stride_s)
    offs = tl.arange(0, DIM_PAD)
    ok = offs < tl.where(slot >= 0, DIM, 0)  # slot -1: padding, stored nowhere
    safe = tl.maximum(slot, 0)
    dst = cache + (safe // BLOCK_SIZE) * stride_block + (safe % BLOCK_SIZE) * stride_slot
    tl.store(dst + offs, tl.load(entry + t.to(tl.int64) * stride_e + offs, mask=ok), mask=ok)


def write_latent(entry: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """entry [T, D] -> cache[slot // block_size, slot % block_size] (no host sync: graph-safe)."""
    t, d = entry.shape
    if t == 0:
        return
    assert entry.stride(-1) == 1 and cache.stride(-1) == 1
    _write_kernel[(t,)](
        cache,
        entry,
        slot_mapping,
        slot_mapping.stride(0),
        entry.stride(0),
        cache.stride(0),
        cache.stride(1),
        BLOCK_SIZE=cache.shape[1],
        DIM=d,
        DIM_PAD=triton.next_power_of_2(d),
    )
