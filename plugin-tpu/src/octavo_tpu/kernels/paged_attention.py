"""Ragged paged attention as a Pallas TPU kernel, and the KV-cache store beside it.

The cache of one layer is one array `[2, num_kv_heads, num_blocks, block_size, head_dim]`
(0 = keys, 1 = values): one page of one KV head is a contiguous `[block_size, head_dim]`
tile, which is what the kernel copies from HBM into VMEM.

A step's queries are ragged (requests of any q_len, prefill chunks and decodes mixed, with
padding rows of a static-shape step). The kernel does not see them that way: `step_metadata`
cuts each request's queries into *work items* of `tile` consecutive tokens, so every item
belongs to one request, and the kernel's grid is (items, KV heads). An item's queries of one
KV head are `tile * group` rows (group = query heads per KV head, rows token-major), so even a
decode's few rows make a matrix for the MXU, and the item walks only the pages its request's
context needs (a causal item stops at its last query's position; a sliding window skips the
pages before it), whatever width the step's block tables have. Everything is computed on the
device from the step's arrays: no counts come back to the host, and all shapes are the
bucket's. The number of items is bounded by `tokens / tile + requests`, the static size.

Interpret mode (`interpret=True`) runs the same kernel with JAX's Pallas interpreter on any
back end (the CPU in tests); `reference.py` is the plain jax.numpy definition it must match.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

#: query tokens per work item: 8 keeps a decode's wasted rows few while `tile * group` rows
#: still fill a sublane-aligned matrix
DEFAULT_TILE = 8


class StepMetadata(NamedTuple):
    """A step as the kernel reads it (a pytree of int32 device arrays; shapes are the bucket's)."""

    slot_mapping: jax.Array  # [T] slot of each token, -1 = padding
    query_start_loc: jax.Array  # [B + 1]
    seq_lens: jax.Array  # [B]
    block_tables: jax.Array  # [B, W]
    item_req: jax.Array  # [N] the request of each work item (clamped for unused items)
    item_pos: jax.Array  # [N] the absolute position of the item's first query
    item_len: jax.Array  # [N] its queries (0 = an unused item)
    item_token: jax.Array  # [N] the row of q holding its first query
    token_item: jax.Array  # [T] the item holding each token's query
    token_row: jax.Array  # [T] ... and its row in that item
    token_real: jax.Array  # [T] bool: a real token (False for padding)


def num_items(num_tokens: int, num_reqs: int, tile: int) -> int:
    """Work items a step of this shape may need: sum over requests of cdiv(q_len, tile)."""
    return -(-num_tokens // tile) + num_reqs


def step_metadata(
    query_start_loc: jax.Array,
    seq_lens: jax.Array,
    block_tables: jax.Array,
    slot_mapping: jax.Array,
    tile: int = DEFAULT_TILE,
) -> StepMetadata:
    """Cut a step's requests into work items (jnp; traced inside the compiled step)."""
    qsl = query_start_loc.astype(jnp.int32)
    seq_lens = seq_lens.astype(jnp.int32)
    num_tokens, num_reqs = slot_mapping.shape[0], seq_lens.shape[0]
    n = num_items(num_tokens, num_reqs, tile)
    q_lens = qsl[1:] - qsl[:-1]
    tiles = (q_lens + tile - 1) // tile  # 0 for padding requests
    first_item = jnp.cumsum(tiles) - tiles  # [B]
    items = jnp.arange(n, dtype=jnp.int32)
    # item j belongs to the last request whose first item is <= j; items past the used ones
    # land on the last request with a tile index past its tiles, so their length comes out 0
    req = jnp.clip(jnp.searchsorted(first_item, items, side="right") - 1, 0, num_reqs - 1).astype(jnp.int32)
    k = items - first_item[req]
    item_len = jnp.clip(q_lens[req] - k * tile, 0, tile).astype(jnp.int32)
    item_pos = (seq_lens[req] - q_lens[req] + k * tile).astype(jnp.int32)
    # each token's request: the last one starting at or before it; padding tokens sit past qsl[-1]
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    token_req = jnp.clip(jnp.searchsorted(qsl[1:], t, side="right"), 0, num_reqs - 1).astype(jnp.int32)
    offset = t - qsl[token_req]
    return StepMetadata(
        slot_mapping=slot_mapping.astype(jnp.int32),
        query_start_loc=qsl,
        seq_lens=seq_lens,
        block_tables=block_tables.astype(jnp.int32),
        item_req=req,
        item_pos=item_pos,
        item_len=item_len,
        item_token=(qsl[req] + k * tile).astype(jnp.int32),
        token_item=(first_item[token_req] + offset // tile).astype(jnp.int32),
        token_row=(offset % tile).astype(jnp.int32),
        token_real=t < qsl[-1],
    )


def write_kv(pages: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array) -> jax.Array:
    """The cache with token t's k/v ([T, num_kv_heads, head_dim]) stored at slot_mapping[t].
    A slot of -1 maps past the last block, and the scatter drops out-of-range writes: padding
    stores nothing, and the scatter keeps one static shape."""
    num_blocks, block_size = pages.shape[2], pages.shape[3]
    slots = slot_mapping.astype(jnp.int32)
    block = jnp.where(slots >= 0, slots // block_size, num_blocks)
    offset = jnp.where(slots >= 0, slots % block_size, 0)
    kv = jnp.stack([k, v]).astype(pages.dtype).transpose(0, 2, 1, 3)  # [2, Hkv, T, D]
    return pages.at[:, :, block, offset].set(kv, mode="drop")


def ragged_paged_attention(
    q: jax.Array,
    pages: jax.Array,
    meta: StepMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    causal: bool = True,
    tile: int = DEFAULT_TILE,
    interpret: bool = False,
) -> jax.Array:
    """q [T, num_heads, head_dim] -> [T, num_heads, head_dim] in q's dtype; padding tokens get zeros."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, block_size = pages.shape[1], pages.shape[3]
    group = num_heads // num_kv_heads
    n = meta.item_req.shape[0]
    rows = tile * group
    # the items' queries, [N, Hkv, tile * group, D]: token-major rows of each KV head's group
    token_of = jnp.clip(meta.item_token[:, None] + jnp.arange(tile, dtype=jnp.int32)[None, :], 0, num_tokens - 1)
    q_items = q[token_of].reshape(n, tile, num_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
    q_items = q_items.reshape(n, num_kv_heads, rows, head_dim)

    kernel = functools.partial(
        _kernel,
        scale=scale,
        window=sliding_window,
        causal=causal,
        group=group,
        block_size=block_size,
        table_width=meta.block_tables.shape[1],
    )
    block = pl.BlockSpec((None, None, rows, head_dim), lambda i, h, *_: (i, h, 0, 0))
    out_items = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(q_items.shape, q.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=5,
            grid=(n, num_kv_heads),
            in_specs=[block, pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=block,
            scratch_shapes=[
                pltpu.VMEM((2, block_size, head_dim), pages.dtype),
                pltpu.SemaphoreType.DMA((2,)),
            ],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="ragged_paged_attention",
    )(
        meta.item_req,
        meta.item_pos,
        meta.item_len,
        meta.seq_lens,
        meta.block_tables.reshape(-1),
        q_items,
        pages,
    )
    # back to token order; padding tokens read whatever item and come out zero
    out = out_items.reshape(n, num_kv_heads, tile, group, head_dim).transpose(0, 2, 1, 3, 4)
    out = out.reshape(n, tile, num_heads, head_dim)[meta.token_item, meta.token_row]
    return jnp.where(meta.token_real[:, None, None], out, jnp.zeros_like(out))


def _kernel(
    item_req,
    item_pos,
    item_len,
    seq_lens,
    tables,  # scalar prefetch (SMEM)
    q_ref,  # [rows, D] of this item and KV head (VMEM)
    pages_hbm,  # [2, Hkv, num_blocks, block_size, D] (HBM)
    o_ref,  # [rows, D]
    kv_buf,  # VMEM [2, block_size, D]: one page of keys and values
    sems,
    *,
    scale,
    window,
    causal,
    group,
    block_size,
    table_width,
):
    i, h = pl.program_id(0), pl.program_id(1)
    req, pos0, n = item_req[i], item_pos[i], item_len[i]
    context = seq_lens[req]
    rows, head_dim = q_ref.shape
    # the keys this item may see: up to its last query (causal) or the whole context, and
    # from the window's start; an unused item (n = 0) reads no page
    end = jnp.minimum(context, pos0 + n) if causal else context
    end = jnp.where(n > 0, end, 0)
    start = jnp.maximum(pos0 - window + 1, 0) if (causal and window is not None) else 0
    # lax.div, not //: floor division lowers through a sign test that asks the default device for
    # its TPU generation, which fails when compiling ahead of time on a host without TPUs (all
    # values here are >= 0, where truncation is floor)
    first_page, last_page = jax.lax.div(start, block_size), jax.lax.div(end + block_size - 1, block_size)

    q = q_ref[...]
    q_pos = pos0 + jax.lax.div(jax.lax.broadcasted_iota(jnp.int32, (rows, block_size), 0), group)
    k_off = jax.lax.broadcasted_iota(jnp.int32, (rows, block_size), 1)
    v_off = jax.lax.broadcasted_iota(jnp.int32, (block_size, head_dim), 0)

    def page_step(p, carry):
        m, total, acc = carry
        page = tables[req * table_width + p]
        copies = [pltpu.make_async_copy(pages_hbm.at[kv, h, page], kv_buf.at[kv], sems.at[kv]) for kv in range(2)]
        for c in copies:
            c.start()
        for c in copies:
            c.wait()
        k, v = kv_buf[0], kv_buf[1]
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
        k_pos = p * block_size + k_off
        visible = k_pos < context
        if causal:
            visible &= k_pos <= q_pos
            if window is not None:
                visible &= k_pos > q_pos - window
        s = jnp.where(visible, s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
        # a row that has seen nothing yet keeps max -inf: shift it by 0, so it stays 0, not NaN
        shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        w = jnp.where(visible, jnp.exp(s - shift), 0.0)
        alpha = jnp.exp(m - shift)
        # slots past the context may hold anything (stale pages, NaN): they must not reach
        # the sum as 0 * NaN
        v = jnp.where(p * block_size + v_off < context, v, jnp.zeros_like(v))
        pv = jax.lax.dot_general(w.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return m_new, alpha * total + w.sum(axis=1, keepdims=True), alpha * acc + pv

    init = (
        jnp.full((rows, 1), -jnp.inf, jnp.float32),
        jnp.zeros((rows, 1), jnp.float32),
        jnp.zeros((rows, head_dim), jnp.float32),
    )
    _, total, acc = jax.lax.fori_loop(first_page, last_page, page_step, init)
    o_ref[...] = jnp.where(total > 0, acc / jnp.where(total > 0, total, 1.0), 0.0).astype(o_ref.dtype)
