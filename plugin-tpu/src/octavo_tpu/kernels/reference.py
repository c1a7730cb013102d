"""Ragged paged attention in plain jax.numpy: the definition the Pallas kernel is tested against.

Written to be obviously right rather than fast: every token gathers its request's whole
block table (bucket-wide), and one mask says what it sees (its request's context, up to its
own position when causal, within the sliding window), all in float32. No work items, no
online softmax, no page loop: nothing it shares with the kernel but the cache layout
`[2, num_kv_heads, num_blocks, block_size, head_dim]` and the step's arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def paged_attention_reference(
    q: jax.Array,
    pages: jax.Array,
    query_start_loc: jax.Array,
    seq_lens: jax.Array,
    block_tables: jax.Array,
    *,
    scale: float,
    sliding_window: int | None = None,
    causal: bool = True,
) -> jax.Array:
    """q [T, num_heads, head_dim] -> [T, num_heads, head_dim] in q's dtype; tokens past the
    last request's (padding) get zeros."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = pages.shape[1]
    group = num_heads // num_kv_heads
    qsl = query_start_loc.astype(jnp.int32)
    seq_lens = seq_lens.astype(jnp.int32)
    t = jnp.arange(num_tokens)
    req = jnp.clip(jnp.searchsorted(qsl[1:], t, side="right"), 0, seq_lens.shape[0] - 1)
    real = t < qsl[-1]
    q_len = qsl[req + 1] - qsl[req]
    q_pos = seq_lens[req] - q_len + (t - qsl[req])  # queries are the last q_len positions
    context = jnp.where(real, seq_lens[req], 0)

    blocks = block_tables[req]  # [T, W]
    # [2, Hkv, T, W, bs, D] -> [2, T, W * bs, Hkv, D]
    kv = pages[:, :, blocks].transpose(0, 2, 3, 4, 1, 5).reshape(2, num_tokens, -1, num_kv_heads, head_dim)
    k, v = kv[0].astype(jnp.float32), kv[1].astype(jnp.float32)
    k_pos = jnp.arange(k.shape[1])[None, :]
    visible = k_pos < context[:, None]
    if causal:
        visible &= k_pos <= q_pos[:, None]
        if sliding_window is not None:
            visible &= k_pos > q_pos[:, None] - sliding_window
    v = jnp.where(visible[:, :, None, None], v, 0.0)  # unread slots may hold NaN
    qg = q.astype(jnp.float32).reshape(num_tokens, num_kv_heads, group, head_dim)
    scores = jnp.einsum("tkgd,tskd->tkgs", qg, k) * scale
    scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.where(visible[:, None, None, :], jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    probs = weights / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("tkgs,tskd->tkgd", probs, v).reshape(num_tokens, num_heads, head_dim)
    return out.astype(q.dtype)
