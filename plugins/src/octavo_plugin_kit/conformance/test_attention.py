"""Conformance of the attention backend: write_kv and attend against the reference.

Each case fills the cache the way the engine does over several steps: the context
of earlier steps first, then this step's tokens, both through the platform's own
`write_kv` into its own layout; then `attend` runs on the flat batch. The reference
does the same in the default layout. Cache memory starts as noise, so a kernel that
reads a slot nobody wrote gets visibly wrong numbers.
"""

from __future__ import annotations

import pytest
import torch

from octavo_plugin_kit import reference
from octavo_plugin_kit.conformance.checks import (
    DTYPE_NAMES,
    DTYPES,
    assert_close,
    call,
    generator_for,
    grid,
    label,
    require_dtype,
)
from octavo_plugin_kit.inputs import context_slot_mapping, make_attention_metadata, new_token_mask

HEAD_DIMS = (64, 128, 80)
GQA_RATIOS = (1, 4, 8)
BLOCK_SIZES = (8, 16, 32)
NUM_KV_HEADS = 2
SPARE_BLOCKS = 5  # blocks no request owns: stale KV a kernel must never read

# (q_lens, seq_lens), decodes first as the runner orders them.
# MIXED: a decode on a one-token context, a decode on a long context, a whole prompt,
# and a prefill chunk whose earlier chunks are already cached.
MIXED = ((1, 1, 37, 20), (1, 300, 37, 133))
BATCH_MIXES = {
    "decodes": ((1, 1, 1, 1), (9, 64, 65, 300)),
    "prefills": ((17, 64, 5), (17, 64, 5)),
    "chunked": ((1, 16, 50, 3), (200, 129, 200, 40)),
    "long": ((96,), (700,)),
}
# every block full and no spare blocks: a padding row stored anywhere (slot -1 read
# as "the last slot", say) overwrites context that attend then reads
PADDED = ((1, 1, 32, 20), (16, 304, 32, 144))
WINDOWS = (1, 7, 64)

dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)


def _skip_unsupported(platform, head_dim: int, block_size: int, dtype: torch.dtype) -> None:
    require_dtype(platform, dtype)
    reason = platform.attention.check_config(head_dim=head_dim, block_size=block_size, dtype=dtype)
    if reason:
        pytest.skip(f"{platform.name}: {reason}")


def _fresh_cache(platform, num_blocks, block_size, head_dim, dtype, generator) -> torch.Tensor:
    shape = platform.attention.kv_cache_shape(num_blocks, block_size, NUM_KV_HEADS, head_dim)
    return torch.randn(shape, generator=generator).to(dtype).to(platform.torch_device())


def check_attend(platform, head_dim, gqa, block_size, dtype, q_lens, seq_lens, window=None, pad_tokens=0):
    """One attention case end to end; `pad_tokens` adds slot -1 rows to this step's write."""
    _skip_unsupported(platform, head_dim, block_size, dtype)
    kernel = "write_kv" if pad_tokens else "attend"
    case = label(
        kernel,
        head_dim=head_dim,
        gqa=gqa,
        block=block_size,
        dtype=dtype,
        window=window,
        pad=pad_tokens or None,
        q_lens=q_lens,
        seq_lens=seq_lens,
    )
    g = generator_for(case)
    dev = platform.torch_device()
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + (0 if pad_tokens else SPARE_BLOCKS)
    meta = make_attention_metadata(seq_lens, q_lens, block_size, num_blocks, dev, g)
    k_ctx = torch.randn(sum(seq_lens), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    v_ctx = torch.randn(sum(seq_lens), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    q = torch.randn(sum(q_lens), NUM_KV_HEADS * gqa, head_dim, generator=g).to(dtype)
    slots, new = context_slot_mapping(meta, block_size), new_token_mask(meta)
    scale = head_dim**-0.5

    attn = platform.attention
    cache = _fresh_cache(platform, num_blocks, block_size, head_dim, dtype, g)
    past = ~new
    if past.any():  # KV written by earlier steps
        call("write_kv", case, attn.write_kv, k_ctx[past].to(dev), v_ctx[past].to(dev), cache, slots[past].to(dev))
    k_new, v_new, slots_new = k_ctx[new], v_ctx[new], meta.slot_mapping.cpu()
    if pad_tokens:  # padding rows with garbage k/v, spread through the step's tokens
        at = torch.linspace(0, len(slots_new), pad_tokens).long()
        noise = torch.randn(pad_tokens, NUM_KV_HEADS, head_dim, generator=g).to(dtype) * 100
        k_new = _insert_rows(k_new, at, noise)
        v_new = _insert_rows(v_new, at, noise)
        slots_new = _insert_rows(slots_new, at, torch.full((pad_tokens,), -1))
    call("write_kv", case, attn.write_kv, k_new.to(dev), v_new.to(dev), cache, slots_new.to(dev))
    out = call("attend", case, attn.attend, q.to(dev), cache, meta, scale, window)

    ref_cache = torch.randn(2, num_blocks, block_size, NUM_KV_HEADS, head_dim, generator=g)
    reference.write_kv(k_ctx.float(), v_ctx.float(), ref_cache, slots)
    ref = reference.attend(q.float(), ref_cache, meta, scale, window)
    assert_close(case, out, ref, dtype)


def _insert_rows(x: torch.Tensor, at: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x with rows[j] inserted before original row at[j] (at sorted)."""
    parts, prev = [], 0
    for j, i in enumerate(at.tolist()):
        parts += [x[prev:i], rows[j : j + 1]]
        prev = i
    return torch.cat(parts + [x[prev:]])


@pytest.mark.octavo_kernel("attend")
@pytest.mark.parametrize(
    "head_dim,gqa,block_size,dtype", grid(("hd", HEAD_DIMS), ("gqa", GQA_RATIOS), ("block", BLOCK_SIZES), ("", DTYPES))
)
def test_attend_shapes(octavo_platform, head_dim, gqa, block_size, dtype):
    check_attend(octavo_platform, head_dim, gqa, block_size, dtype, *MIXED)


@pytest.mark.octavo_kernel("attend")
@dtype_param
@pytest.mark.parametrize("mix", list(BATCH_MIXES))
def test_attend_batch_mixes(octavo_platform, mix, dtype):
    check_attend(octavo_platform, 128, 4, 16, dtype, *BATCH_MIXES[mix])


@pytest.mark.octavo_kernel("attend")
@pytest.mark.parametrize("window,block_size,dtype", grid(("window", WINDOWS), ("block", BLOCK_SIZES), ("", DTYPES)))
def test_attend_sliding_window(octavo_platform, window, block_size, dtype):
    check_attend(octavo_platform, 64, 4, block_size, dtype, *BATCH_MIXES["chunked"], window=window)


@pytest.mark.octavo_kernel("write_kv")
@dtype_param
def test_write_kv_padding_through_attend(octavo_platform, dtype):
    """Slot -1 rows must not be stored, whatever the layout."""
    check_attend(octavo_platform, 64, 4, 16, dtype, *PADDED, pad_tokens=4)


@pytest.mark.octavo_kernel("write_kv")
@pytest.mark.parametrize("head_dim,block_size,dtype", grid(("hd", HEAD_DIMS), ("block", BLOCK_SIZES), ("", DTYPES)))
def test_write_kv_default_layout(octavo_platform, head_dim, block_size, dtype):
    """In the default layout the cache must hold exactly the written values and
    nothing else may change. Platforms with their own layout are checked through
    attend only."""
    platform = octavo_platform
    _skip_unsupported(platform, head_dim, block_size, dtype)
    num_blocks, num_tokens = 12, 40
    default = (2, num_blocks, block_size, NUM_KV_HEADS, head_dim)
    shape = tuple(platform.attention.kv_cache_shape(num_blocks, block_size, NUM_KV_HEADS, head_dim))
    if shape != default:
        pytest.skip(f"{platform.name} uses its own KV layout {shape}; write_kv is checked through attend")
    case = label("write_kv", head_dim=head_dim, block=block_size, dtype=dtype, tokens=num_tokens)
    g = generator_for(case)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[::7] = -1  # padding rows: not stored
    k = torch.randn(num_tokens, NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    v = torch.randn(num_tokens, NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    cache = torch.randn(default, generator=g).to(dtype)
    expected = cache.clone()
    reference.write_kv(k, v, expected, slots)

    dev = platform.torch_device()
    cache = cache.to(dev)
    call("write_kv", case, platform.attention.write_kv, k.to(dev), v.to(dev), cache, slots.to(dev))
    # a copy must be bit-exact; compare element-wise to name the first wrong slot
    diff = (cache.cpu() != expected).any(dim=-1).any(dim=-1)  # [2, num_blocks, block_size]
    if diff.any():
        kv, block, offset = (int(i) for i in diff.nonzero()[0])
        pytest.fail(
            f"{case}: {'kv'[kv]} of slot {block * block_size + offset} (block {block}, offset {offset}) "
            f"differs from the reference; {int(diff.sum())} slots differ",
            pytrace=False,
        )
