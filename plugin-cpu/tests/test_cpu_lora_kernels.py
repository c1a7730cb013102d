"""octavo-cpu's native multi-LoRA kernels (csrc/lora.cpp) against the plugin kit's token-by-token
reference, with core's torch definition kept out of the way (the test fails if the platform's
ops fall back to it). The conformance suite's `lora` check runs the same ops through the platform."""

from __future__ import annotations

import pytest
import torch

from octavo.platform import FusedOps
from octavo_cpu import lora as native_lora
from octavo_cpu.ops import CpuOps
from octavo_plugin_kit import reference

pytestmark = pytest.mark.skipif(native_lora._lora is None, reason="octavo_cpu._lora did not build")

CASES = [
    # tokens, slots, in, slice sizes, rank
    (1, 1, 64, (64,), 8),
    (64, 8, 96, (64, 16, 16), 16),  # a decode batch over 8 adapters, qkv-like slices
    (70, 3, 200, (1100,), 4),  # columns past one 512-wide block, an odd width
]


@pytest.fixture
def no_fallback(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("core's torch definition ran instead of octavo-cpu's kernel")

    monkeypatch.setattr(FusedOps, "lora_shrink", refuse)
    monkeypatch.setattr(FusedOps, "lora_expand", refuse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}xS{c[1]}")
@pytest.mark.parametrize("threads", [1, 2])
def test_shrink_expand_match_reference(no_fallback, case, dtype, threads):
    tokens, slots, i, sizes, rank = case
    g = torch.Generator().manual_seed(tokens * 31 + slots)
    x = torch.randn(tokens, i, generator=g).to(dtype)
    a = (torch.randn(slots, len(sizes), rank, i, generator=g) * i**-0.5).to(dtype)
    b = (torch.randn(slots, rank, sum(sizes), generator=g) * rank**-0.5).to(dtype)
    a[0, :, rank // 2 :] = 0  # a smaller rank, padded with zeros
    b[0, rank // 2 :] = 0
    slot_of = torch.randint(-1, slots, (tokens,), generator=g)
    y = torch.randn(tokens, sum(sizes), generator=g).to(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        h = CpuOps(torch.device("cpu")).lora_shrink(x, a, slot_of)
        out = CpuOps(torch.device("cpu")).lora_expand(y.clone(), h, b, slot_of, sizes)
    finally:
        torch.set_num_threads(before)
    want_h = reference.lora_shrink(x, a, slot_of)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(h, want_h, **tol)
    # the expand from the same h: its own rounding only
    torch.testing.assert_close(out, reference.lora_expand(y, h, b, slot_of, sizes), **tol)
    assert torch.equal(out[slot_of < 0], y[slot_of < 0]), "rows without an adapter changed"
