"""octavo_triton.lora (multi-LoRA shrink and expand) against the kit's token-by-token reference.

On a GPU the cases run at Llama-3.1-8B's projection sizes; on a CPU, `test_under_interpreter`
re-runs this file with TRITON_INTERPRET=1 at small sizes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

reference = pytest.importorskip("octavo_plugin_kit.reference", reason="the references are the plugin kit's")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and not INTERPRET and torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
kernels = pytest.mark.skipif(not (ON_GPU or (INTERPRET and HAS_TRITON)), reason="needs a GPU or TRITON_INTERPRET=1")
#: (tokens, slots, in_features, slice sizes, rank): a decode batch, a prefill, a fused MLP, a small rank;
#: on the CPU the last case's features span several of shrink's K splits
CASES = (
    [(64, 8, 4096, (4096, 1024, 1024), 16), (700, 4, 4096, (4096,), 16), (40, 3, 4096, (14336, 14336), 8)]
    if ON_GPU
    else [(5, 3, 40, (32, 16, 16), 16), (37, 2, 72, (80,), 8), (20, 4, 24, (48, 48), 4), (9, 2, 600, (32, 16), 8)]
)
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-S{c[1]}-N{len(c[3])}-R{c[4]}")
def test_shrink_and_expand(case, dtype):
    from octavo_triton.lora import lora_expand, lora_shrink

    tokens, num_slots, in_features, sizes, rank = case
    g = torch.Generator().manual_seed(tokens + rank)
    x = torch.randn(tokens, in_features, generator=g).to(dtype)
    a = (torch.randn(num_slots, len(sizes), rank, in_features, generator=g) * in_features**-0.5).to(dtype)
    a[0, :, rank // 2 :] = 0  # slot 0 holds a smaller rank, padded
    b = (torch.randn(num_slots, rank, sum(sizes), generator=g) * rank**-0.5).to(dtype)
    slots = torch.randint(-1, num_slots, (tokens,), generator=g)
    slots[: tokens // 2] = 1  # a run of one slot (a prompt), then a mix (decodes), some without an adapter
    y = torch.randn(tokens, sum(sizes), generator=g).to(dtype)

    h = lora_shrink(x.to(DEVICE), a.to(DEVICE), slots.to(DEVICE))
    want_h = reference.lora_shrink(x, a, slots)
    torch.testing.assert_close(h.cpu().float(), want_h.float(), atol=TOL[dtype], rtol=TOL[dtype])
    out = lora_expand(y.clone().to(DEVICE), want_h.to(DEVICE), b.to(DEVICE), slots.to(DEVICE), sizes)
    want_y = reference.lora_expand(y, want_h, b, slots, sizes)
    torch.testing.assert_close(out.cpu().float(), want_y.float(), atol=TOL[dtype], rtol=TOL[dtype])
    untouched = slots == -1
    assert torch.equal(out.cpu()[untouched], y[untouched]), "rows without an adapter must keep y exactly"


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
