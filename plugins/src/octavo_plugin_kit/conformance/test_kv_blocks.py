"""Conformance of `read_blocks` / `write_blocks` (contract 2.3; disaggregated prefill moves KV
between two instances' caches with them).

Blocks read from one cache and written into other blocks of a second cache must be the same
KV there: a request whose block table names the copies attends exactly as one naming the
originals (the back end's own `attend` is the judge, so any layout will do), and the blocks
not written keep what they held. Both caches start stale (noise in every slot, written by
the back end's `write_kv`), so a copy that misses part of a block shows. A back end whose
layout the default does not know raises NotImplementedError: skipped, as an optional kernel.
"""

from __future__ import annotations

import pytest
import torch

from octavo.platform import AttentionSpec
from octavo_plugin_kit.conformance.checks import DTYPE_NAMES, DTYPES, assert_close, call, generator_for, label
from octavo_plugin_kit.conformance.test_attention import NUM_KV_HEADS, _skip_unsupported, _stale_cache
from octavo_plugin_kit.inputs import paged_batch

NUM_BLOCKS = 9
SRC, DST = [7, 2, 5], [0, 8, 3]  # a request's blocks in the source cache, and where they go


@pytest.mark.octavo_kernel("read_blocks")
@pytest.mark.parametrize("block_size", (8, 16))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
def test_blocks_moved_between_caches(octavo_platform, block_size, dtype):
    layer = AttentionSpec(num_heads=2 * NUM_KV_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=64, scale=0.125)
    _skip_unsupported(octavo_platform, layer, block_size, dtype)
    case = label("read_blocks", block=block_size, dtype=dtype)
    g = generator_for(case)
    attn, dev = octavo_platform.attention, octavo_platform.device.torch_device()
    source = _stale_cache(octavo_platform, case, layer, dtype, block_size, NUM_BLOCKS, g)
    target = _stale_cache(octavo_platform, case, layer, dtype, block_size, NUM_BLOCKS, g)
    src, dst = (torch.tensor(b, dtype=torch.int64, device=dev) for b in (SRC, DST))
    kept = [b for b in range(NUM_BLOCKS) if b not in DST]
    kept_ids = torch.tensor(kept, dtype=torch.int64, device=dev)
    before = call("read_blocks", case, attn.read_blocks, target, kept_ids, layer).clone()
    moved = call("read_blocks", case, attn.read_blocks, source, src, layer)
    call("write_blocks", case, attn.write_blocks, target, dst, moved, layer)

    seq = len(SRC) * block_size - 3  # a partly filled last block: its tail is stale in both
    q = torch.randn(4, layer.num_heads, layer.head_dim, generator=g).to(dtype).to(dev)

    def attend(cache, blocks):
        batch = paged_batch([seq], [4], [blocks], block_size, dev)
        return call("attend", case, attn.attend, q, cache, attn.build_metadata(batch), layer)

    assert_close(case, attend(target, DST), attend(source, SRC).float(), dtype)
    after = call("read_blocks", case, attn.read_blocks, target, kept_ids, layer)
    assert torch.equal(after, before), f"{case}: write_blocks changed blocks it was not given"
