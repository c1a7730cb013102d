"""Conformance of the attention back end: its KV cache, write_kv and attend against the reference.

Each case runs as the engine does, through the back end's own calls only: `kv_cache_spec`
and `allocate` make one layer's cache, `build_metadata` turns each step's `ForwardBatch`
into the back end's view, `write_kv` stores KV and `attend` reads it. The reference does
the same in the default layout (`octavo_plugin_kit.reference`).

The cache is the back end's: the suite never reads or fills it itself (one exception
below), so any layout and any type `allocate` returns will do. It makes the cache stale
the way serving does, by writing noise KV into every slot through the back end's own
`write_kv` first, as if earlier requests had used every block and freed it: a kernel that
reads a slot the case did not write gets visibly wrong numbers. Then the context of
earlier steps is written (one prefill of it), then this step's tokens, and `attend` runs
on the step's flat batch. The one requirement on the back end is the contract's:
`write_kv` takes k/v `[T, num_kv_heads, head_dim]` for any slots of the batch it is given.

`test_write_kv_default_layout` alone looks inside: when `allocate` returns a tensor in the
default layout `[2, num_blocks, block_size, num_kv_heads, head_dim]`, the written values
must be exactly there and nothing else may change.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from octavo.platform import AttentionSpec
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
from octavo_plugin_kit.inputs import (
    context_slot_mapping,
    every_slot_batch,
    history_batch,
    make_forward_batch,
    new_token_mask,
)

HEAD_DIMS = (64, 128, 80)
GQA_RATIOS = (1, 4, 8)
BLOCK_SIZES = (8, 16, 32)
NUM_KV_HEADS = 2
SPARE_BLOCKS = 5  # blocks no request owns: stale KV a kernel must never read

# (q_lens, seq_lens), in no particular order: the runner does not put decodes first.
# MIXED: a whole prompt, a decode on a long context, a prefill chunk whose earlier chunks
# are already cached, and a decode on a one-token context.
MIXED = ((37, 1, 20, 1), (37, 300, 133, 1))
BATCH_MIXES = {
    "decodes": ((1, 1, 1, 1), (9, 64, 65, 300)),
    "prefills": ((17, 64, 5), (17, 64, 5)),
    "chunked": ((1, 16, 50, 3), (200, 129, 200, 40)),
    "decodes-last": ((50, 16, 1, 1), (50, 200, 64, 9)),
    "long": ((96,), (700,)),
}
# every block full and no spare blocks: a padding row stored anywhere (slot -1 read
# as "the last slot", say) overwrites context that attend then reads
PADDED = ((16, 1, 32, 1), (16, 304, 32, 144))
WINDOWS = (1, 7, 64)

dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)


def _layer(head_dim: int, gqa: int, window: int | None = None, causal: bool = True) -> AttentionSpec:
    return AttentionSpec(
        num_heads=NUM_KV_HEADS * gqa,
        num_kv_heads=NUM_KV_HEADS,
        head_dim=head_dim,
        scale=head_dim**-0.5,
        sliding_window=window,
        causal=causal,
    )


def _skip_unsupported(platform, layer: AttentionSpec, block_size: int, dtype: torch.dtype) -> None:
    require_dtype(platform, dtype)
    reason = platform.attention.supports(layer, dtype, block_size)
    if reason:
        pytest.skip(f"{platform.name}: {reason}")


def _allocate(platform, case, layer, dtype, block_size, num_blocks):
    """One layer's cache of `num_blocks` blocks, as the runner allocates it."""
    attn = platform.attention
    spec = call("kv_cache_spec", case, attn.kv_cache_spec, layer, dtype, block_size)
    if spec.block_size != block_size:
        pytest.fail(
            f"{case}: kv_cache_spec(block_size={block_size}) describes blocks of {spec.block_size} tokens; "
            "core allocates the block size it asks for (force one through SchedulingPolicy.block_size)",
            pytrace=False,
        )
    return call("allocate", case, attn.allocate, layer, spec, num_blocks)


def _stale_cache(platform, case, layer, dtype, block_size, num_blocks, g):
    """A cache whose every slot holds noise KV, written by the back end's own write_kv."""
    cache = _allocate(platform, case, layer, dtype, block_size, num_blocks)
    dev = platform.device.torch_device()
    fill = every_slot_batch(num_blocks, block_size, dev)
    shape = (num_blocks * block_size, NUM_KV_HEADS, layer.head_dim)
    k, v = (torch.randn(shape, generator=g).to(dtype).to(dev) for _ in range(2))
    _write(platform, case, k, v, cache, fill)
    return cache


def _write(platform, case, k, v, cache, batch) -> None:
    attn = platform.attention
    meta = call("build_metadata", case, attn.build_metadata, batch)
    call("write_kv", case, attn.write_kv, k, v, cache, meta)


def check_attend(
    platform,
    head_dim,
    gqa,
    block_size,
    dtype,
    q_lens,
    seq_lens,
    window=None,
    causal=True,
    pad_tokens=0,
    pad_reqs=0,
    kernel="attend",
):
    """One attention case end to end. `pad_tokens` / `pad_reqs` pad the step as a
    static-shape runner does: tokens with slot -1 and noise k/v past the last request,
    requests with q_len 0 after the real ones. Their output rows are not compared."""
    layer = _layer(head_dim, gqa, window, causal)
    _skip_unsupported(platform, layer, block_size, dtype)
    case = label(
        kernel,
        head_dim=head_dim,
        gqa=gqa,
        block=block_size,
        dtype=dtype,
        window=window,
        causal=None if causal else False,
        pad_tokens=pad_tokens or None,
        pad_reqs=pad_reqs or None,
        q_lens=q_lens,
        seq_lens=seq_lens,
    )
    g = generator_for(case)
    dev = platform.device.torch_device()
    # a padded step uses every block: nothing spare for a stray padding row to land in unseen
    spare = 0 if pad_tokens else SPARE_BLOCKS
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + spare
    batch = make_forward_batch(seq_lens, q_lens, block_size, num_blocks, dev, g, pad_tokens, pad_reqs)
    k_ctx = torch.randn(sum(seq_lens), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    v_ctx = torch.randn(sum(seq_lens), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    num_real = sum(q_lens)
    q = torch.randn(num_real + pad_tokens, layer.num_heads, head_dim, generator=g).to(dtype)
    slots, new = context_slot_mapping(batch, block_size), new_token_mask(batch)

    cache = _stale_cache(platform, case, layer, dtype, block_size, num_blocks, g)
    past = history_batch(batch, block_size)
    if past is not None:  # KV written by earlier steps
        _write(platform, case, k_ctx[~new].to(dev), v_ctx[~new].to(dev), cache, past)
    noise = torch.randn(pad_tokens, NUM_KV_HEADS, head_dim, generator=g).to(dtype) * 100
    k_new, v_new = torch.cat([k_ctx[new], noise]), torch.cat([v_ctx[new], -noise])
    attn = platform.attention
    meta = call("build_metadata", case, attn.build_metadata, batch)  # one view per step, for both calls
    call("write_kv", case, attn.write_kv, k_new.to(dev), v_new.to(dev), cache, meta)
    out = call("attend", case, attn.attend, q.to(dev), cache, meta, layer)
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(q.shape):
        pytest.fail(f"{case}: output shape {tuple(out.shape)} != q's {tuple(q.shape)}", pytrace=False)

    ref_cache = torch.zeros(2, num_blocks, block_size, NUM_KV_HEADS, head_dim)
    reference.write_kv(k_ctx.float(), v_ctx.float(), ref_cache, slots)
    ref = reference.attend(q.float(), ref_cache, batch, layer.scale, window, causal)
    assert_close(case, out[:num_real] if isinstance(out, torch.Tensor) else out, ref[:num_real], dtype)


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


@pytest.mark.octavo_kernel("attend")
@dtype_param
@pytest.mark.parametrize("mix", ["prefills", "chunked", "decodes-last"])
def test_attend_non_causal(octavo_platform, mix, dtype):
    """causal=False (encoders): every query sees its request's whole context. A back end
    without it says so in `supports()`, and these cases skip with its reason."""
    check_attend(octavo_platform, 64, 4, 16, dtype, *BATCH_MIXES[mix], causal=False)


@pytest.mark.octavo_kernel("attend")
@dtype_param
def test_attend_padded_step(octavo_platform, dtype):
    """A static-shape step: requests with q_len 0 and tokens with slot -1 past the last
    request. The real rows must come out as without the padding."""
    check_attend(octavo_platform, 64, 4, 16, dtype, *MIXED, pad_tokens=5, pad_reqs=3)


@pytest.mark.octavo_kernel("write_kv")
@dtype_param
def test_write_kv_padding_through_attend(octavo_platform, dtype):
    """Slot -1 rows must not be stored, whatever the layout."""
    check_attend(octavo_platform, 64, 4, 16, dtype, *PADDED, pad_tokens=4, kernel="write_kv")


@pytest.mark.octavo_kernel("write_kv")
@pytest.mark.parametrize("head_dim,block_size,dtype", grid(("hd", HEAD_DIMS), ("block", BLOCK_SIZES), ("", DTYPES)))
def test_write_kv_default_layout(octavo_platform, head_dim, block_size, dtype):
    """In the default layout the cache must hold exactly the written values and
    nothing else may change. Back ends with their own layout are checked through
    attend only."""
    platform = octavo_platform
    layer = _layer(head_dim, 4)
    _skip_unsupported(platform, layer, block_size, dtype)
    num_blocks, seq_lens = 12, [13, 1, 19, 7]
    case = label("write_kv", head_dim=head_dim, block=block_size, dtype=dtype, tokens=sum(seq_lens))
    g = generator_for(case)
    cache = _allocate(platform, case, layer, dtype, block_size, num_blocks)
    default = (2, num_blocks, block_size, NUM_KV_HEADS, head_dim)
    if not (isinstance(cache, torch.Tensor) and tuple(cache.shape) == default and cache.dtype == dtype):
        what = tuple(cache.shape) if isinstance(cache, torch.Tensor) else type(cache).__name__
        pytest.skip(f"{platform.name} uses its own KV layout {what}; write_kv is checked through attend")
    dev = platform.device.torch_device()
    batch = make_forward_batch(seq_lens, seq_lens, block_size, num_blocks, dev, g)
    slots = batch.slot_mapping.cpu().clone()
    slots[::7] = -1  # rows that store nothing, anywhere in the batch (profiling and warm-up steps)
    batch = dataclasses.replace(batch, slot_mapping=slots.to(dev))
    k = torch.randn(len(slots), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    v = torch.randn(len(slots), NUM_KV_HEADS, head_dim, generator=g).to(dtype)
    stale = torch.randn(default, generator=g).to(dtype)
    cache.copy_(stale.to(dev))
    expected = stale.clone()
    reference.write_kv(k, v, expected, slots)

    _write(platform, case, k.to(dev), v.to(dev), cache, batch)
    # a copy must be bit-exact; compare element-wise to name the first wrong slot
    diff = (cache.cpu() != expected).any(dim=-1).any(dim=-1)  # [2, num_blocks, block_size]
    if diff.any():
        kv, block, offset = (int(i) for i in diff.nonzero()[0])
        pytest.fail(
            f"{case}: {'kv'[kv]} of slot {block * block_size + offset} (block {block}, offset {offset}) "
            f"differs from the reference; {int(diff.sum())} slots differ",
            pytrace=False,
        )


@pytest.mark.octavo_kernel("kv_cache")
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_kv_cache_spec_and_allocate(octavo_platform, block_size):
    """`kv_cache_spec` is what core sizes the cache by: a block must hold every slot's k
    and v, and a cache `allocate` returns as tensors must grow by at most `page_bytes` a
    block (a small fixed overhead, such as a scratch block for padding rows, is the back
    end's own), zero-filled (kernels may read slots no token has written yet)."""
    platform = octavo_platform
    dtype = platform.device.supported_dtypes[0]
    layer = _layer(128, 2)
    _skip_unsupported(platform, layer, block_size, dtype)
    case = label("kv_cache", head_dim=128, kv_heads=NUM_KV_HEADS, block=block_size, dtype=dtype)
    spec = call("kv_cache_spec", case, platform.attention.kv_cache_spec, layer, dtype, block_size)
    elem = torch.empty((), dtype=spec.dtype).element_size()
    least = 2 * block_size * NUM_KV_HEADS * 128 * elem
    assert isinstance(spec.page_bytes, int) and spec.page_bytes >= least, (
        f"{case}: kv_cache_spec gives page_bytes={spec.page_bytes}, less than the {least} bytes of one block's "
        f"keys and values in {spec.dtype}"
    )
    sizes = {}
    for num_blocks in (10, 20):
        tensors = _tensors_in(_allocate(platform, case, layer, dtype, block_size, num_blocks))
        if not tensors:
            return  # an opaque handle: only the back end's kernels know its size
        dirty = [tuple(t.shape) for t in tensors if bool(t.count_nonzero())]
        assert not dirty, f"{case}: allocate returned tensors that are not zero-filled: {dirty}"
        sizes[num_blocks] = sum(t.numel() * t.element_size() for t in tensors)
    per_block = (sizes[20] - sizes[10]) / 10
    assert per_block <= spec.page_bytes, (
        f"{case}: each block allocate adds takes {per_block:.0f} bytes, but kv_cache_spec promised "
        f"page_bytes={spec.page_bytes}: core sizes the cache by page_bytes, so memory would run out"
    )


def _tensors_in(cache) -> list[torch.Tensor]:
    """The tensors of a cache that is a tensor or a list, tuple or dict of them."""
    if isinstance(cache, torch.Tensor):
        return [cache]
    if isinstance(cache, dict):
        cache = list(cache.values())
    if isinstance(cache, (list, tuple)):
        return [t for part in cache for t in _tensors_in(part)]
    return []
