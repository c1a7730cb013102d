"""Conformance of latent (MLA) attention: `write_latent` and `attend_latent` against the reference.

An optional capability (contract 2.3): a back end without `supports_mla` refuses latent layers
in `supports()`, and these cases skip with its reason. As in test_attention.py the cache is
the back end's own, made stale first through its own `write_latent` (noise in every slot),
then the context of earlier steps is written, then the step's entries, and `attend_latent`
runs on the step's flat batch; the reference does the same in the default latent layout
`[num_blocks, block_size, head_dim]`.
"""

from __future__ import annotations

import pytest
import torch

from octavo.platform import AttentionSpec
from octavo_plugin_kit import reference
from octavo_plugin_kit.conformance.checks import DTYPES, assert_close, call, generator_for, grid, label, require_dtype
from octavo_plugin_kit.inputs import context_slot_mapping, every_slot_batch, history_batch, make_forward_batch

#: latent_dim -> its rotary key's features: DeepSeek-V2/V3's 512 + 64, and a small pair
ROPE_DIMS = {512: 64, 96: 32}
HEADS = (16, 128)  # DeepSeek-V2-Lite's heads, V3's
BLOCK_SIZES = (16, 64)
MIXES = {
    "mixed": ((37, 1, 20, 1), (37, 300, 133, 1)),
    "decodes": ((1, 1, 1), (9, 64, 517)),
}
SPARE_BLOCKS = 3


def check_attend_latent(platform, latent, heads, block_size, dtype, q_lens, seq_lens):
    rope = ROPE_DIMS[latent]
    layer = AttentionSpec(
        num_heads=heads, num_kv_heads=1, head_dim=latent + rope, scale=(128 + rope) ** -0.5, latent_dim=latent
    )
    require_dtype(platform, dtype)
    reason = platform.attention.supports(layer, dtype, block_size)
    if reason:
        pytest.skip(f"{platform.name}: {reason}")
    case = label(
        "attend_latent",
        latent=latent,
        rope=rope,
        heads=heads,
        block=block_size,
        dtype=dtype,
        q_lens=q_lens,
        seq_lens=seq_lens,
    )
    g = generator_for(case)
    dev = platform.device.torch_device()
    attn = platform.attention
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + SPARE_BLOCKS
    batch = make_forward_batch(seq_lens, q_lens, block_size, num_blocks, dev, g)
    entries = torch.randn(sum(seq_lens), layer.head_dim, generator=g).to(dtype)
    q = torch.randn(sum(q_lens), heads, layer.head_dim, generator=g).to(dtype)
    slots = context_slot_mapping(batch, block_size)
    new = torch.tensor([p >= s - n for s, n in zip(seq_lens, q_lens) for p in range(s)])

    spec = call("kv_cache_spec", case, attn.kv_cache_spec, layer, dtype, block_size)
    cache = call("allocate", case, attn.allocate, layer, spec, num_blocks)

    def write(rows: torch.Tensor, step) -> None:
        meta = call("build_metadata", case, attn.build_metadata, step)
        call("write_latent", case, attn.write_latent, rows.to(dev), cache, meta)

    noise = torch.randn(num_blocks * block_size, layer.head_dim, generator=g).to(dtype) * 10
    write(noise, every_slot_batch(num_blocks, block_size, dev))  # stale entries a kernel must never read
    past = history_batch(batch, block_size)
    if past is not None:
        write(entries[~new], past)
    meta = call("build_metadata", case, attn.build_metadata, batch)
    call("write_latent", case, attn.write_latent, entries[new].to(dev), cache, meta)
    out = call("attend_latent", case, attn.attend_latent, q.to(dev), cache, meta, layer)

    ref_cache = torch.zeros(num_blocks, block_size, layer.head_dim)
    reference.write_latent(entries.float(), ref_cache, slots)
    ref = reference.attend_latent(q.float(), ref_cache, batch, layer.scale, latent)
    assert_close(case, out, ref, dtype)


@pytest.mark.octavo_kernel("attend_latent")
@pytest.mark.parametrize(
    "latent,heads,block_size,dtype",
    grid(("latent", tuple(ROPE_DIMS)), ("heads", HEADS), ("block", BLOCK_SIZES), ("", DTYPES)),
)
def test_attend_latent_shapes(octavo_platform, latent, heads, block_size, dtype):
    check_attend_latent(octavo_platform, latent, heads, block_size, dtype, *MIXES["mixed"])


@pytest.mark.octavo_kernel("attend_latent")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_attend_latent_decodes(octavo_platform, dtype):
    check_attend_latent(octavo_platform, 512, 16, 16, dtype, *MIXES["decodes"])
