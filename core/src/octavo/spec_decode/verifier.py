"""The runner's side of speculative decoding: the target's logits at a request's proposed
positions -> how many proposals stand, the token after them, and their logprobs.

Row j of a request with k proposals d_0..d_{k-1} holds the target's logits after
d_0..d_{j-1}; it is processed exactly as the sampler processes a decode row whose output so
far ends with those tokens (penalties count them, min_tokens counts them), so each accepted or
drawn token follows the distribution a step without speculation would have drawn it from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from octavo.platform.runner import TokenLogprobs
from octavo.sampling import Sampler
from octavo.sampling_params import SamplingParams
from octavo.scheduler import ScheduledRequest
from octavo.spec_decode.rejection import rejection_sample
from octavo.transfer import to_device


@dataclass(frozen=True)
class Verified:
    num_accepted: int
    token: int  # drawn after the accepted proposals
    # per emitted token (accepted proposals, then `token`): its logprobs, or None when not asked for
    logprobs: list[TokenLogprobs | None]


def rows_of(scheduled: Sequence[ScheduledRequest], query_start_loc: Sequence[int]) -> list[int]:
    """The flat batch's rows whose logits verification reads: each request's last k + 1
    positions (its last known token and its k proposals); `scheduled` in batch order."""
    rows: list[int] = []
    for i, s in enumerate(scheduled):
        if s.spec_token_ids:
            end = query_start_loc[i + 1]
            rows += range(end - len(s.spec_token_ids) - 1, end)
    return rows


def verify(
    sampler: Sampler,
    logits: torch.Tensor,
    scheduled: Sequence[ScheduledRequest],
    draft_probs: Sequence[torch.Tensor | None] | None = None,
) -> dict[str, Verified]:
    """logits [sum(k_i + 1), V]: the rows `rows_of` names, in that order, for the requests in
    `scheduled` that carry proposals (`scheduled` holds only those). draft_probs: per request,
    the proposer's distributions its proposals were drawn from (None: one-hot proposals)."""
    params: list[SamplingParams] = []
    histories: list[tuple[list[int], int]] = []
    bans: list[bool] = []
    starts: list[int] = []
    for s in scheduled:
        starts.append(len(params))
        p = s.sampling_params
        n_out = len(s.all_token_ids) + s.num_pending - s.num_prompt_tokens
        for j in range(len(s.spec_token_ids) + 1):
            params.append(p)
            # penalties read the history: row j's includes the first j proposals
            history = list(s.all_token_ids) + list(s.spec_token_ids[:j]) if p.penalized and j else s.all_token_ids
            histories.append((history, s.num_prompt_tokens))
            bans.append(n_out + j < p.min_tokens)
    probs = sampler.distribution(logits, params, histories, bans)
    verdicts = rejection_sample(
        probs,
        starts,
        [s.spec_token_ids for s in scheduled],
        [sampler.uniform(s.request_id, s.sampling_params) for s in scheduled],
        lambda weights, u: sampler.draw(weights.log(), None, u),
        draft_probs,
    )
    # logprobs of the emitted tokens, from the model's logits as the sampler reports them
    lp_rows: list[int] = []
    lp_tokens: list[int] = []
    for s, start, v in zip(scheduled, starts, verdicts):
        if s.sampling_params.logprobs is not None:
            emitted = list(s.spec_token_ids[: v.num_accepted]) + [v.token]
            lp_rows += range(start, start + len(emitted))
            lp_tokens += emitted
    lps: list[TokenLogprobs | None] = []
    if lp_rows:
        rows_t = to_device(lp_rows, torch.long, logits.device)
        lps = sampler.logprobs(
            logits.index_select(0, rows_t),
            to_device(lp_tokens, torch.long, logits.device),
            [params[r] for r in lp_rows],
        )
    out: dict[str, Verified] = {}
    k = 0
    for s, v in zip(scheduled, verdicts):
        n = v.num_accepted + 1
        if s.sampling_params.logprobs is not None:
            mine, k = lps[k : k + n], k + n
        else:
            mine = [None] * n
        out[s.request_id] = Verified(v.num_accepted, v.token, mine)
    return out
