"""Sampling inside the compiled step, in jax.numpy, with core's semantics (octavo/sampling.py).

Per row: greedy rows take the argmax of the raw logits. The others divide by their
temperature, keep their top-k and nucleus (top-p: a token goes when the mass strictly before
it already reaches top_p), drop tokens below min_p times the most likely one's, then draw by
inverse CDF at u, the uniform the host drew for the row (core's generators: seeded requests
from their own, the rest from torch's), on unnormalized weights as `FusedOps.sample` defines.
Everything is per-row arrays of the step's request bucket; a step whose rows are all greedy
takes the argmax branch alone (a `lax.cond`, so the sort is not paid for greedy decoding).

What this does not do (penalties, logit bias, allowed tokens, banned EOS under min_tokens,
logprobs) the runner leaves to core's sampler on the host, over the logits the step returns.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SamplingArrays(NamedTuple):
    """One row per request of the step's bucket (padding rows: greedy)."""

    greedy: jax.Array  # bool
    temperature: jax.Array  # f32, 1 for greedy rows
    top_k: jax.Array  # i32, 0 = off
    top_p: jax.Array  # f32, 1 = off
    min_p: jax.Array  # f32, 0 = off
    u: jax.Array  # f32 in [0, 1)


def sample(logits: jax.Array, rows: SamplingArrays) -> jax.Array:
    """logits [R, V] float32 -> token ids [R] int32."""
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.lax.cond(
        jnp.all(rows.greedy),
        lambda: greedy_tokens,
        lambda: jnp.where(rows.greedy, greedy_tokens, _draw(logits, rows)),
    )


def _draw(logits: jax.Array, rows: SamplingArrays) -> jax.Array:
    v = logits.shape[-1]
    x = logits / rows.temperature[:, None]
    # top-k and top-p over one descending sort
    order = jnp.argsort(-x, axis=-1, stable=True)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(rows.top_k > 0, jnp.minimum(rows.top_k, v), v)
    sorted_x = jnp.where(rank >= k[:, None], -jnp.inf, sorted_x)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    # rows without top-p keep everything (a cumulative sum may round past 1.0 before the end)
    drop = (before >= rows.top_p[:, None]) & (rows.top_p[:, None] < 1.0)
    sorted_x = jnp.where(drop, -jnp.inf, sorted_x)
    x = jnp.take_along_axis(sorted_x, jnp.argsort(order, axis=-1), axis=-1)
    top = jnp.max(x, axis=-1, keepdims=True)
    x = jnp.where(x < top + jnp.log(rows.min_p)[:, None], -jnp.inf, x)  # min_p 0: log 0 = -inf bans nothing
    # inverse CDF on unnormalized weights: the first token whose cumulative weight exceeds u * total
    cdf = jnp.cumsum(jnp.exp(x - top), axis=-1)
    total = cdf[:, -1:]
    target = jnp.minimum(rows.u[:, None] * total, jnp.nextafter(total, 0.0))
    return jnp.minimum(jnp.sum(cdf <= target, axis=-1), v - 1).astype(jnp.int32)
