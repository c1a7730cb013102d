"""The inner step shared by the prefill and decode attention kernels.

One call consumes TILE_N consecutive key positions of one request and one KV head:
it gathers their pages through the block table, scores them against the query rows,
and folds them into the running (acc, m, l) of an online softmax in base 2 (the
softmax scale is premultiplied by log2(e), so exp2 replaces exp).

KV layout (the interface's default): `[2, num_blocks, block_size, num_kv_heads,
head_dim]`; the callers pass the key and value halves separately, already offset to
their KV head, so a key row lives at `page * stride_block + slot * stride_slot`. Each
row is head_dim contiguous elements (256 bytes for 128 x bf16), so the per-key gather
stays coalesced even when a tile spans several pages, and the block size is free to
be any power of two.
"""

import triton
import triton.language as tl


@triton.jit
def _operand(x, UPCAST: tl.constexpr):
    if UPCAST:  # only under the CPU interpreter, see octavo_triton.interpreting
        x = x.to(tl.float32)
    return x


@triton.jit
def attend_tile(
    acc,
    m_i,
    l_i,  # running state: [M, HEAD_DIM] f32, [M] f32, [M] f32
    q,  # [M, HEAD_DIM], the cache's dtype
    k_cache,
    v_cache,  # pointers to keys / values of this KV head in block 0, slot 0
    block_table,  # pointer to this request's row of the block table (int32 page ids)
    start_n,  # first key position of the tile
    key_end,  # with BOUND, positions >= key_end are neither loaded nor seen
    q_pos,  # [M] absolute position of each row's query token (for CAUSAL / WINDOW)
    window,  # sliding window W (with WINDOW): a row sees keys > q_pos - W
    scale_log2,  # softmax scale * log2(e)
    stride_block,
    stride_slot,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BOUND: tl.constexpr,  # the tile may reach key_end; without it loads go unmasked
    CAUSAL: tl.constexpr,  # the tile may cross the diagonal of some row
    WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, TILE_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if BOUND:
        # page ids past the request's last block may be garbage: never follow them
        n_ok = offs_n < key_end
        page = tl.load(block_table + offs_n // BLOCK_SIZE, mask=n_ok, other=0)
    else:
        page = tl.load(block_table + offs_n // BLOCK_SIZE)
    row = page.to(tl.int64) * stride_block + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_slot

    k_ptrs = k_cache + row[None, :] + offs_d[:, None]  # [HEAD_DIM, TILE_N]
    if BOUND:
        k = tl.load(k_ptrs, mask=n_ok[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
    # no accumulator argument: a None passed through a jit function's parameter reaches
    # tl.dot as constexpr(None), which triton 3.3 (and triton-xpu 3.3) rejects ("'constexpr'
    # object has no attribute 'handle'")
    s = tl.dot(_operand(q, UPCAST), _operand(k, UPCAST), input_precision=DOT_PRECISION) * scale_log2
    if BOUND:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    if CAUSAL:
        s = tl.where(offs_n[None, :] <= q_pos[:, None], s, float("-inf"))
    if WINDOW:
        s = tl.where(offs_n[None, :] > q_pos[:, None] - window, s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row that has seen no visible key yet keeps m = -inf; shift it by 0 instead
    # so that exp2(-inf - -inf) never makes a NaN
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)

    v_ptrs = v_cache + row[:, None] + offs_d[None, :]  # [TILE_N, HEAD_DIM]
    if BOUND:
        v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    # accumulate in place (the matrix unit adds into acc) rather than add a fresh product
    acc = tl.dot(
        _operand(p.to(v.dtype), UPCAST), _operand(v, UPCAST), acc * alpha[:, None], input_precision=DOT_PRECISION
    )
    return acc, m_new, l_i
