"""BlockManager: allocation, reference counts, prefix cache and LRU eviction (no torch)."""

import pytest

from octavo.block_manager import BlockManager


def test_allocate_grows_and_refuses_without_change():
    bm = BlockManager(num_blocks=4, block_size=4)
    table = []
    assert bm.allocate(table, 5) and len(table) == 2
    assert bm.allocate(table, 8) and len(table) == 2  # still fits
    assert not bm.allocate(table, 4 * 5)  # 5 blocks > 4
    assert len(table) == 2 and bm.num_free_blocks == 2
    bm.free(table)
    assert bm.num_free_blocks == 4
    bm.check_invariants()


def test_double_free_is_caught():
    bm = BlockManager(num_blocks=2, block_size=4)
    t = []
    bm.allocate(t, 4)
    bm.free(t)
    with pytest.raises(AssertionError):
        bm.free(t)


def _fill(bm, tokens):
    """Allocate and 'compute' a request's tokens; return (blocks, keys)."""
    blocks, keys = [], []
    assert bm.allocate(blocks, len(tokens))
    bm.register_full_blocks(tokens, blocks, keys, len(tokens))
    return blocks, keys


def test_prefix_hit_reuses_blocks_and_counts_references():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = list(range(10))  # 2 full blocks + 2 tokens
    blocks_a, keys_a = _fill(bm, a)
    assert len(keys_a) == 2
    hit, hit_keys = bm.find_cached_prefix(a[:8] + [99, 98], 9)
    assert hit == blocks_a[:2] and hit_keys == keys_a
    bm.take_cached(hit)
    assert bm.ref_counts[blocks_a[0]] == 2
    bm.free(hit)
    bm.free(blocks_a)
    assert bm.num_free_blocks == 8
    bm.check_invariants()


def test_prefix_lookup_is_exact_and_chained():
    bm = BlockManager(num_blocks=8, block_size=4)
    _fill(bm, [1, 2, 3, 4, 5, 6, 7, 8])
    # same second block after a different first block: no hit (the chain differs)
    assert bm.find_cached_prefix([9, 9, 9, 9, 5, 6, 7, 8], 8) == ([], [])
    # first block equal, second differs in one token: only the first block hits
    hit, _ = bm.find_cached_prefix([1, 2, 3, 4, 5, 6, 7, 0], 8)
    assert len(hit) == 1
    # max_tokens caps the hit to whole blocks below it
    hit, _ = bm.find_cached_prefix([1, 2, 3, 4, 5, 6, 7, 8], 7)
    assert len(hit) == 1


def test_freed_blocks_stay_cached_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    old, _ = _fill(bm, [1, 1, 2, 2])  # blocks for the first request
    bm.free(old)
    newer, _ = _fill(bm, [3, 3, 4, 4])
    bm.free(newer)
    # both still cached while free
    assert len(bm.find_cached_prefix([1, 1, 2, 2, 0], 4)[0]) == 2
    assert len(bm.find_cached_prefix([3, 3, 4, 4, 0], 4)[0]) == 2
    # one new block evicts the least recently used one: the first request's tail went
    # to the free queue before its head, and before the second request's blocks
    t = []
    bm.allocate(t, 2)
    assert t == [old[1]]
    assert len(bm.find_cached_prefix([1, 1, 2, 2, 0], 4)[0]) == 1  # its head survives
    assert len(bm.find_cached_prefix([3, 3, 4, 4, 0], 4)[0]) == 2
    bm.check_invariants()


def test_reviving_a_cached_free_block_takes_it_off_the_free_queue():
    bm = BlockManager(num_blocks=3, block_size=2)
    blocks, _ = _fill(bm, [5, 5, 6, 6])
    bm.free(blocks)
    hit, _ = bm.find_cached_prefix([5, 5, 6, 6, 7], 4)
    assert bm.num_evictable_hits(hit) == 2
    bm.take_cached(hit)
    assert bm.num_free_blocks == 1
    t = []
    assert not bm.allocate(t, 4)  # only one block really free
    bm.free(hit)
    bm.check_invariants()


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    blocks, keys = _fill(bm, [1, 2, 3, 4])
    assert keys == []
    assert bm.find_cached_prefix([1, 2, 3, 4, 5], 4) == ([], [])


def _identified(salt, spans):
    from octavo.request import Request
    from octavo.sampling_params import SamplingParams

    req = Request("r", [0], SamplingParams())
    req.cache_salt, req.identity_spans = salt, spans
    return req.block_identity()


def test_block_identity_separates_equal_tokens():
    """A salt (e.g. a LoRA adapter) isolates every block; a span (e.g. an image's placeholder
    tokens and its content hash) isolates the blocks it overlaps and those after them."""
    bm = BlockManager(num_blocks=16, block_size=4)
    tokens = [7] * 12  # placeholder-like tokens: equal ids, different content
    blocks = []
    assert bm.allocate(blocks, 12)
    image_a = _identified(None, [(4, 8, "image-a")])
    bm.register_full_blocks(tokens, blocks, [], 12, image_a)
    # the same image hits everything; another image hits only the block before its span
    assert bm.find_cached_prefix(tokens, 12, image_a)[0] == blocks
    assert bm.find_cached_prefix(tokens, 12, _identified(None, [(4, 8, "image-b")]))[0] == blocks[:1]
    assert bm.find_cached_prefix(tokens, 12)[0] == blocks[:1]  # no identity: the image blocks differ
    # a salt differs from the first block on
    assert bm.find_cached_prefix(tokens, 12, _identified("adapter-1", [(4, 8, "image-a")]))[0] == []
    salted = []
    assert bm.allocate(salted, 12)
    bm.register_full_blocks(tokens, salted, [], 12, _identified("adapter-1", []))
    assert bm.find_cached_prefix(tokens, 12, _identified("adapter-1", []))[0] == salted
    assert bm.find_cached_prefix(tokens, 12, _identified("adapter-2", []))[0] == []
    bm.check_invariants()


def test_blocks_without_cache_entries_are_reused_before_cached_or_unused_ones():
    """A freed block holding no prefix-cache entry (a partial block) is reused first: before a
    cached block (whose KV may still hit) and before a never-used block (whose memory, on the
    CPU, is not committed yet)."""
    bm = BlockManager(num_blocks=8, block_size=2)
    blocks, _ = _fill(bm, [1, 1, 2, 2, 3])  # two full (cached) blocks and a partial one
    bm.free(blocks)
    t = []
    bm.allocate(t, 2)
    assert t == [blocks[2]]
    assert len(bm.find_cached_prefix([1, 1, 2, 2, 0], 4)[0]) == 2
    off = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    first, _ = _fill(off, [1, 1, 2, 2, 3])
    off.free(first)
    again, _ = _fill(off, [4, 4, 5, 5, 6])
    assert sorted(again) == sorted(first)  # the same (touched) blocks, not new ones
    off.check_invariants()
    bm.check_invariants()
