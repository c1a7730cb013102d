"""The reference of `FusedOps.fused_moe` (contract 2.3): a mixture-of-experts layer's experts,
token by token and choice by choice, in float32.

Core's definition (`octavo.platform.ops.fused_moe`) groups the tokens by expert and rounds
each GEMM's output to the input's dtype, as a linear layer would; this one keeps every
intermediate in float32, so the conformance suite can hold a kernel to the exact result of
its (already rounded) inputs."""

from __future__ import annotations

import torch

from octavo.platform.ops import MOE_ACTIVATIONS


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """out[t] = sum over k with topk_ids[t, k] >= 0 of topk_weights[t, k] * w2[e] @ act(w13[e] @ x[t]),
    e = topk_ids[t, k]; x [T, H], w13 [E, 2I, H] (gate rows, then up rows), w2 [E, H, I];
    returns [T, H] in x's dtype."""
    act = MOE_ACTIVATIONS[activation]
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        xt = x[t].float().cpu()
        for w, e in zip(topk_weights[t].tolist(), topk_ids[t].tolist()):
            if e < 0:  # sent nowhere
                continue
            h = act(w13[e].float().cpu() @ xt)  # float32 in, float32 out: no rounding in between
            out[t] += w * (w2[e].float().cpu() @ h)
    return out.to(x.dtype)
