"""octavo_triton.mla_attention (DeepSeek's latent attention and its cache write) against the kit's reference.

On a GPU every case runs at DeepSeek's sizes (latent 512 + rotary 64, 16 and 128 heads); on
a CPU, `test_under_interpreter` re-runs this file with TRITON_INTERPRET=1 at small sizes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

reference = pytest.importorskip("octavo_plugin_kit.reference", reason="the references are the plugin kit's")
inputs = pytest.importorskip("octavo_plugin_kit.inputs")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and not INTERPRET and torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
kernels = pytest.mark.skipif(not (ON_GPU or (INTERPRET and HAS_TRITON)), reason="needs a GPU or TRITON_INTERPRET=1")
#: (latent, rope, heads)
SHAPES = [(512, 64, 16), (512, 64, 128)] if ON_GPU else [(32, 16, 4)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
MIXES = {
    "decodes": ([1, 1, 1], [9, 64, 300]),  # split over the keys
    "mixed": ([5, 1, 20, 1], [5, 200, 133, 1]),  # a prompt, decodes, a chunk after cached context
}


def _case(latent, rope, heads, dtype, q_lens, seq_lens, block_size, num_splits=None):
    from octavo_triton.mla_attention import mla_attention, write_latent

    g = torch.Generator().manual_seed(latent + heads + len(q_lens))
    d = latent + rope
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 3
    batch = inputs.make_forward_batch(seq_lens, q_lens, block_size, num_blocks, DEVICE, g)
    ctx = inputs.context_slot_mapping(batch, block_size)
    entries = torch.randn(len(ctx), d, generator=g).to(dtype)
    q = torch.randn(sum(q_lens), heads, d, generator=g).to(dtype)
    cache = torch.full((num_blocks, block_size, d), 99.0, dtype=dtype, device=DEVICE)  # stale: never read
    slots = ctx.clone()
    slots[::5] = -1  # padding rows store nothing...
    write_latent(entries.to(DEVICE), cache, slots.to(DEVICE))
    write_latent(entries[::5].to(DEVICE), cache, ctx[::5].to(DEVICE))  # ...and are written here instead
    ref_cache = torch.zeros(num_blocks, block_size, d)
    reference.write_latent(entries.float(), ref_cache, ctx)
    written = ref_cache.view(-1, d)[ctx]
    assert torch.equal(cache.view(-1, d)[ctx.to(DEVICE)].float().cpu(), written), "write_latent"
    out = torch.empty(sum(q_lens), heads, latent, dtype=dtype, device=DEVICE)
    scale = (128 + rope) ** -0.5
    mla_attention(
        out,
        q.to(DEVICE),
        cache,
        batch.block_tables,
        batch.seq_lens,
        batch.query_start_loc,
        len(q_lens),
        max(q_lens),
        max(seq_lens),
        scale,
        num_splits,
    )
    want = reference.attend_latent(q.float(), ref_cache, batch, scale, latent)
    torch.testing.assert_close(out.float().cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


@kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_mla_attention_matches_the_reference(shape, dtype, mix):
    _case(*shape, dtype, *MIXES[mix], block_size=16)


@kernels
@pytest.mark.parametrize("num_splits", [1, 3])
def test_split_keys_combine_to_the_same_output(num_splits):
    _case(*SHAPES[0], torch.float32, [1, 1], [40, 70], block_size=8, num_splits=num_splits)


@pytest.mark.skipif(not HAS_TRITON or INTERPRET or ON_GPU, reason="runs the file under the interpreter on a CPU")
def test_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
