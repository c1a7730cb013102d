"""The Pallas ragged paged attention kernel (interpret mode) against its jax.numpy reference,
and the KV store against a loop over slots: ragged prefill / decode mixes, GQA ratios, block
sizes, sliding windows, non-causal layers, bf16, padded steps and stale (NaN) pages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from octavo_tpu.kernels.paged_attention import ragged_paged_attention, step_metadata, write_kv
from octavo_tpu.kernels.reference import paged_attention_reference

CASES = {
    # name: (q_lens, seq_lens, block_size, kv_heads, group, head_dim, window, causal, dtype)
    "decodes": ((1, 1, 1, 1), (9, 64, 65, 300), 16, 2, 4, 32, None, True, jnp.float32),
    "prefills": ((17, 64, 5), (17, 64, 5), 16, 2, 1, 64, None, True, jnp.float32),
    "mixed-chunked": ((37, 1, 20, 1), (37, 300, 133, 1), 8, 1, 3, 64, None, True, jnp.float32),
    "long-prefill-chunk": ((96,), (700,), 32, 2, 2, 16, None, True, jnp.float32),
    "window": ((1, 20, 7), (1, 52, 100), 16, 2, 4, 32, 7, True, jnp.float32),
    "non-causal": ((3, 13, 1), (40, 13, 9), 16, 2, 2, 32, None, False, jnp.float32),
    "bf16-gqa8": ((37, 1, 20, 1), (37, 300, 133, 1), 16, 1, 8, 128, None, True, jnp.bfloat16),
}
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def _step(q_lens, seq_lens, block_size, kv_heads, head_dim, dtype, pad_tokens, pad_reqs, rng):
    """A padded step over a shuffled cache whose free blocks are NaN (never read)."""
    num_pages = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(num_pages) + 3
    order = rng.permutation(num_blocks)
    width = max(num_pages) + 1  # tables wider than any request: padding entries read block 0
    tables = np.zeros((len(seq_lens) + pad_reqs, width), np.int32)
    used = 0
    for i, n in enumerate(num_pages):
        tables[i, :n] = order[used : used + n]
        used += n
    qsl = np.concatenate([[0], np.cumsum(q_lens), np.full(pad_reqs, sum(q_lens))]).astype(np.int32)
    seq = np.array(list(seq_lens) + [0] * pad_reqs, np.int32)
    pages = rng.standard_normal((2, kv_heads, num_blocks, block_size, head_dim)).astype(np.float32)
    pages[:, :, order[used:]] = np.nan
    return jnp.asarray(pages, dtype), jnp.asarray(qsl), jnp.asarray(seq), jnp.asarray(tables), sum(q_lens) + pad_tokens


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case):
    q_lens, seq_lens, block_size, kv_heads, group, head_dim, window, causal, dtype = CASES[case]
    rng = np.random.default_rng(len(case))
    pages, qsl, seq, tables, num_tokens = _step(q_lens, seq_lens, block_size, kv_heads, head_dim, dtype, 5, 2, rng)
    q = jnp.asarray(rng.standard_normal((num_tokens, kv_heads * group, head_dim)), dtype)
    slots = jnp.full((num_tokens,), -1, jnp.int32)
    args = {"scale": head_dim**-0.5, "sliding_window": window, "causal": causal}

    @jax.jit
    def kernel(q, pages, qsl, seq, tables, slots):
        return ragged_paged_attention(q, pages, step_metadata(qsl, seq, tables, slots), interpret=True, **args)

    got = np.asarray(kernel(q, pages, qsl, seq, tables, slots).astype(jnp.float32))
    reference = jax.jit(lambda *a: paged_attention_reference(*a, **args))
    want = np.asarray(reference(q, pages, qsl, seq, tables).astype(jnp.float32))
    real = sum(q_lens)
    assert np.isfinite(got).all(), "a stale (NaN) page reached the output"
    np.testing.assert_allclose(got[:real], want[:real], atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    assert not got[real:].any(), "padding tokens must come out zero"


@pytest.mark.parametrize("tile", [1, 4, 16])
def test_any_tile_gives_the_same_attention(tile):
    """Work items of any size cover every query once (the cut into items is not the math)."""
    rng = np.random.default_rng(tile)
    pages, qsl, seq, tables, num_tokens = _step((5, 1, 33), (40, 17, 33), 16, 2, 32, jnp.float32, 3, 1, rng)
    q = jnp.asarray(rng.standard_normal((num_tokens, 4, 32)), jnp.float32)
    slots = jnp.full((num_tokens,), -1, jnp.int32)

    @jax.jit
    def kernel(q, pages, qsl, seq, tables, slots):
        meta = step_metadata(qsl, seq, tables, slots, tile=tile)
        return ragged_paged_attention(q, pages, meta, scale=0.2, tile=tile, interpret=True)

    got = kernel(q, pages, qsl, seq, tables, slots)
    want = jax.jit(lambda *a: paged_attention_reference(*a, scale=0.2))(q, pages, qsl, seq, tables)
    np.testing.assert_allclose(np.asarray(got)[:39], np.asarray(want)[:39], atol=2e-5, rtol=2e-5)


def test_write_kv_stores_each_slot_and_drops_padding():
    rng = np.random.default_rng(0)
    num_blocks, block_size, kv_heads, head_dim = 6, 8, 2, 16
    pages = rng.standard_normal((2, kv_heads, num_blocks, block_size, head_dim)).astype(np.float32)
    slots = np.array([5, 17, -1, 40, 0, -1, 47], np.int32)
    k, v = rng.standard_normal((2, len(slots), kv_heads, head_dim)).astype(np.float32)
    got = np.asarray(write_kv(jnp.asarray(pages), jnp.asarray(k), jnp.asarray(v), jnp.asarray(slots)))
    want = pages.copy()
    for t, slot in enumerate(slots):
        if slot >= 0:
            block, offset = divmod(int(slot), block_size)
            want[0, :, block, offset], want[1, :, block, offset] = k[t], v[t]
    np.testing.assert_array_equal(got, want)
