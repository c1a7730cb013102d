"""Conformance of `fused_moe` (optional, contract 2.3): a platform's experts against the kit's
reference (octavo_plugin_kit.reference_moe) over expert counts, top-k, token counts from a
decode to a prefill chunk, and dtypes; ids of -1 (padding, another rank's experts) send a
token nowhere. Routing is the model's (octavo.layers.moe), not the op's: the ids come from a
softmax top-k of random logits, distinct per token as a router gives them."""

from __future__ import annotations

import pytest
import torch

from octavo_plugin_kit import reference_moe
from octavo_plugin_kit.conformance.checks import DTYPES, assert_close, call, generator_for, grid, label, require_dtype

HIDDEN, INTERMEDIATE = 128, 96


def _case(experts: int, top_k: int, tokens: int, dtype: torch.dtype, g: torch.Generator, dropped: float = 0.0):
    x = torch.randn(tokens, HIDDEN, generator=g).to(dtype)
    # scaled so gate, up and the output stay near 1 whatever the sizes
    w13 = (torch.randn(experts, 2 * INTERMEDIATE, HIDDEN, generator=g) * HIDDEN**-0.5).to(dtype)
    w2 = (torch.randn(experts, HIDDEN, INTERMEDIATE, generator=g) * INTERMEDIATE**-0.5).to(dtype)
    weights, ids = torch.topk(torch.randn(tokens, experts, generator=g).softmax(-1), top_k, dim=-1)
    if dropped:
        ids = ids.masked_fill(torch.rand(tokens, top_k, generator=g) < dropped, -1)
    return x, w13, w2, weights.float(), ids


@pytest.mark.octavo_kernel("fused_moe")
@pytest.mark.parametrize(
    "experts,top_k,tokens,dtype",
    grid(("e", (8, 64)), ("k", (1, 2, 8)), ("t", (1, 37, 300)), ("", DTYPES)),
)
def test_fused_moe(octavo_platform, experts, top_k, tokens, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("fused_moe", experts=experts, top_k=top_k, tokens=tokens, dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    x, w13, w2, weights, ids = _case(experts, top_k, tokens, dtype, g)
    args = (x.to(dev), w13.to(dev), w2.to(dev), weights.to(dev), ids.to(dev))
    out = call("fused_moe", case, p.ops.fused_moe, *args)
    assert_close(case, out, reference_moe.fused_moe(x, w13, w2, weights, ids).float(), dtype)


@pytest.mark.octavo_kernel("fused_moe")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_moe_skips_ids_of_minus_one(octavo_platform, dtype):
    """Expert parallelism pads what it sends with id -1; a row of only -1 comes back zero."""
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("fused_moe", experts=16, top_k=4, tokens=50, dropped=0.4, dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    x, w13, w2, weights, ids = _case(16, 4, 50, dtype, g, dropped=0.4)
    ids[0] = -1
    out = call("fused_moe", case, p.ops.fused_moe, x.to(dev), w13.to(dev), w2.to(dev), weights.to(dev), ids.to(dev))
    assert_close(case, out, reference_moe.fused_moe(x, w13, w2, weights, ids).float(), dtype)
    assert not out[0].any(), f"{case}: a token sent to no expert must come back zero"
