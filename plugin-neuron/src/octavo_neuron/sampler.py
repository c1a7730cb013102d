"""On-device sampling: each request's next token drawn inside the step's compiled program, so
a step hands the host one token per request instead of a row of logits.

Neuron's samplers draw from the `TOP_K_LIMIT` most likely tokens of a row (NxD Inference's
`global_topk`, 256 by default; vLLM's Neuron runner clamps top_k to it). This one does the
same with core's semantics (octavo.sampling): temperature first, then top-k, top-p and min-p
on the tempered distribution, then the platform's inverse-CDF draw (`FusedOps.sample`) with the
host's uniform number, over the candidates in vocabulary order as core's sampler runs it.

What each request gets (`placement`):

| request | where |
| --- | --- |
| greedy | device: argmax |
| temperature with 1 <= top_k <= 256 (any top_p, min_p) | device, among the 256 most likely |
| temperature, top_k off, top_p = 1 (any min_p) | device, over the whole vocabulary |
| temperature with top_k > 256 | refused: the error names the limit and the fix |
| top_k off with top_p < 1 (the nucleus may reach past 256) | core's sampler, on the step's logits |
| logprobs, logit_bias, allowed_token_ids, penalties, min_tokens | core's sampler, on the step's logits |

Nothing is changed silently: a request is sampled exactly as core would, or refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from octavo.sampling_params import SamplingParams
from octavo.transfer import to_device

#: the most candidates the device's sampler keeps per row (NxD Inference's default global_topk)
TOP_K_LIMIT = 256


class Placement(enum.Enum):
    DEVICE = "device"
    EAGER = "eager"  # core's sampler on the step's logits, outside the compiled program


def refusal(params: SamplingParams) -> str | None:
    """Why the device cannot sample this request at all (None: it can, on the device or eagerly)."""
    if not params.greedy and params.top_k > TOP_K_LIMIT:
        return (
            f"top_k={params.top_k} exceeds the Neuron device's sampling limit of {TOP_K_LIMIT} candidates: "
            f"set top_k to at most {TOP_K_LIMIT}, or to 0 (off) to sample from the whole vocabulary"
        )
    return None


def placement(params: SamplingParams, min_tokens_pending: bool) -> Placement:
    """Where a request the device accepts is sampled (see the module doc's table)."""
    edits = params.logit_bias or params.allowed_token_ids is not None or params.penalized or min_tokens_pending
    if edits or params.logprobs is not None:
        return Placement.EAGER
    if not params.greedy and params.top_k == 0 and params.top_p < 1.0:
        return Placement.EAGER
    return Placement.DEVICE


@dataclass(frozen=True)
class SamplingInputs:
    """One step's sampling parameters, one row per request of its request bucket (padding
    rows are greedy): device tensors of a fixed shape, an input of the compiled program."""

    floats: torch.Tensor  # float32 [4, R]: temperature, top_p, min_p, u
    ints: torch.Tensor  # int64 [2, R]: greedy (0/1), top_k (0 = whole vocabulary)

    @classmethod
    def build(
        cls, params: list[SamplingParams | None], uniforms: list[float], rows: int, device: torch.device
    ) -> SamplingInputs:
        """`params[i]` None: row i samples eagerly or is padding (greedy here; its token is not used)."""
        pad = [None] * (rows - len(params))
        rows_params = [p if p is not None and not p.greedy else None for p in params + pad]
        u = uniforms + [0.0] * (rows - len(uniforms))
        floats = [
            [p.temperature if p else 1.0 for p in rows_params],
            [p.top_p if p else 1.0 for p in rows_params],
            [p.min_p if p else 0.0 for p in rows_params],
            u,
        ]
        ints = [[0 if p else 1 for p in rows_params], [p.top_k if p else 0 for p in rows_params]]
        return cls(to_device(floats, torch.float32, device), to_device(ints, torch.int64, device))


def _min_p(x: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p times the row's most likely one (0: none)."""
    floor = x.amax(dim=-1, keepdim=True) + torch.log(min_p).unsqueeze(1)
    return x.masked_fill(x < floor, float("-inf"))


def sample(logits: torch.Tensor, inputs: SamplingInputs, ops) -> torch.Tensor:
    """Traced into the step: logits [R, V] float32 -> tokens [R] int64, no host sync, every
    shape fixed by R (`ops`: the platform's FusedOps, whose `sample` is the draw)."""
    temperature, top_p, min_p, u = inputs.floats.unbind(0)
    greedy, top_k = inputs.ints[0].bool(), inputs.ints[1]
    k = min(TOP_K_LIMIT, logits.shape[1])
    tempered = logits / temperature.unsqueeze(1)

    # among the k most likely tokens: top-k and top-p on them sorted, as core's sampler does
    # on the whole sorted row (past the k-th token it masks them all anyway)
    cand, cand_ids = tempered.topk(k, dim=-1)
    keep = torch.where(top_k > 0, top_k, k).unsqueeze(1)  # rows that take the whole vocabulary keep all k here
    cand = cand.masked_fill(torch.arange(k, device=logits.device) >= keep, float("-inf"))
    probs = cand.softmax(dim=-1)
    cand = cand.masked_fill(probs.cumsum(dim=-1) - probs >= top_p.unsqueeze(1), float("-inf"))
    cand = _min_p(cand, min_p)
    # back to vocabulary order: the draw's cumulative sum runs over tokens in core's order
    order = cand_ids.argsort(dim=-1)
    picked = ops.sample(cand.gather(1, order), None, u)
    from_candidates = cand_ids.gather(1, order).gather(1, picked.unsqueeze(1)).squeeze(1)

    # the whole vocabulary (top_k off, top_p 1): temperature and min-p only
    from_vocabulary = ops.sample(_min_p(tempered, min_p), None, u)

    sampled = torch.where(top_k > 0, from_candidates, from_vocabulary)
    return torch.where(greedy, logits.argmax(dim=-1), sampled)
