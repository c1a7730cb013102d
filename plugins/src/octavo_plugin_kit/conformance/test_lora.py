"""Conformance of the batched LoRA ops (`lora_shrink`, `lora_expand`) through `platform.ops`,
against the kit's token-by-token reference.

Cases: a decode-sized batch and a prefill-sized one (core's default takes a different path
for each), tokens without an adapter (slot -1) among them, a single-slice layer (o_proj) and a
fused one whose slices differ in size (qkv with GQA), ranks padded with zeros.
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
    label,
    require_dtype,
)

CASES = [
    # tokens, slots, in_features, slice sizes, rank
    (1, 1, 64, (64,), 8),
    (9, 4, 96, (64, 32, 32), 16),
    (600, 4, 128, (128, 32, 32), 8),
    (300, 8, 64, (96, 96), 16),
]


def _inputs(case: str, tokens, slots, in_features, sizes, rank, dtype, dev):
    g = generator_for(case)
    x = torch.randn(tokens, in_features, generator=g).to(dtype)
    a = (torch.randn(slots, len(sizes), rank, in_features, generator=g) * in_features**-0.5).to(dtype)
    b = (torch.randn(slots, rank, sum(sizes), generator=g) * rank**-0.5).to(dtype)
    a[0, :, rank // 2 :] = 0  # slot 0 holds a smaller rank, padded
    # token -> slot, some tokens with none; every slot in use
    token_slots = torch.randint(-1, slots, (tokens,), generator=g)
    token_slots[: min(slots, tokens)] = torch.arange(min(slots, tokens))
    y = torch.randn(tokens, sum(sizes), generator=g).to(dtype)
    return x.to(dev), a.to(dev), b.to(dev), token_slots.to(dev), y.to(dev)


@pytest.mark.octavo_kernel("lora")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("tokens,slots,in_features,sizes,rank", CASES, ids=["one", "decode", "prefill", "gate_up"])
def test_lora_shrink_expand(octavo_platform, tokens, slots, in_features, sizes, rank, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("lora", tokens=tokens, slots=slots, in_features=in_features, sizes=sizes, rank=rank, dtype=dtype)
    dev = p.device.torch_device()
    x, a, b, token_slots, y = _inputs(case, tokens, slots, in_features, sizes, rank, dtype, dev)
    h = call("lora_shrink", case, p.ops.lora_shrink, x, a, token_slots)
    want_h = reference.lora_shrink(x, a, token_slots)
    assert_close(case + " shrink", h, want_h, dtype)
    want_y = reference.lora_expand(y, want_h, b, token_slots, sizes)
    out = call("lora_expand", case, p.ops.lora_expand, y.clone(), want_h.to(dev), b, token_slots, sizes)
    assert_close(case + " expand", out, want_y, dtype)
