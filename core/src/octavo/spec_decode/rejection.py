"""Rejection sampling of proposed tokens: the output follows the target's distribution exactly.

For a proposed token d drawn from the proposer's distribution q, with the target's distribution
p at the same position: accept d with probability min(1, p(d) / q(d)); at the first rejection,
draw the replacement from normalize(max(0, p - q)) and stop; when every proposal is accepted,
draw one more token from the target's p after the last one. Each emitted token is then
distributed exactly as p (Leviathan et al. 2023, Chen et al. 2023, theorem 1).

A proposer that gives no distribution (n-gram lookup, a greedy draft) proposes with q one-hot
at d: acceptance is p(d), and the residual is p with d removed. A greedy target row is one-hot
at its argmax (`Sampler.distribution`): d is then accepted iff it is the argmax, and the
replacement is the argmax, which is token-for-token greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from octavo.transfer import to_device

#: draws a token per row from unnormalized weights [S, V] given one uniform per row (as
#: `FusedOps.sample` with logits log(weights))
Draw = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Verdict:
    """One request's outcome: how many proposals were accepted, and the token after them."""

    num_accepted: int
    token: int


def rejection_sample(
    probs: torch.Tensor,
    row_starts: Sequence[int],
    drafts: Sequence[Sequence[int]],
    uniforms: Sequence[Callable[[], float]],
    draw: Draw,
    draft_probs: Sequence[torch.Tensor | None] | None = None,
) -> list[Verdict]:
    """Verify each request's proposals against the target.

    probs: the target's distributions [R, V]; request i owns rows row_starts[i] ..
    row_starts[i] + len(drafts[i]) (row j: the distribution of the token after drafts[i][:j]).
    uniforms[i]: request i's U[0, 1) source (its seeded generator, or the global one).
    draft_probs[i]: the proposer's distributions [len(drafts[i]), V] the drafts were drawn
    from, or None for one-hot proposals. Waits for the device once for the acceptance tests.
    """
    dev = probs.device
    q_given = draft_probs is not None and any(q is not None for q in draft_probs)
    rows = [row_starts[i] + j for i, d in enumerate(drafts) for j in range(len(d))]
    flat = [t for d in drafts for t in d]
    p_at: list[float] = []
    q_at: list[float] = []
    if rows:
        rows_t, flat_t = to_device(rows, torch.long, dev), to_device(flat, torch.long, dev)
        p_at = probs[rows_t, flat_t].tolist()
        if q_given:
            assert draft_probs is not None
            qs = [q if q is not None else _one_hot(d, probs.shape[1], dev) for q, d in zip(draft_probs, drafts)]
            q_at = torch.cat(qs)[torch.arange(len(flat), device=dev), flat_t].tolist()

    # the acceptance tests, in order per request, on the host
    accepted: list[int] = []
    k = 0
    for i, d in enumerate(drafts):
        a = 0
        while a < len(d):
            if not _accepts(uniforms[i](), p_at[k + a], q_at[k + a] if q_given else 1.0):
                break
            a += 1
        accepted.append(a)
        k += len(d)

    # the token after the accepted ones: from p, or from the residual after a rejection
    final_rows = to_device([row_starts[i] + a for i, a in enumerate(accepted)], torch.long, dev)
    weights = probs.index_select(0, final_rows)
    rejected = [i for i, a in enumerate(accepted) if a < len(drafts[i])]
    if rejected:
        weights = weights.clone()
        for i in rejected:
            a = accepted[i]
            q = draft_probs[i] if q_given and draft_probs is not None else None
            if q is not None:
                residual = (weights[i] - q[a]).clamp_(min=0)
            else:  # q one-hot at the rejected token: p without it
                residual = weights[i].clone()
                residual[drafts[i][a]] = 0.0
            # p == q leaves nothing, but then the proposal is never rejected (u < 1): only
            # rounding gets here, and p is the right law for it
            if float(residual.sum()) > 0:
                weights[i] = residual
    u = to_device([uniforms[i]() for i in range(len(drafts))], torch.float32, dev)
    tokens = draw(weights, u).tolist()
    return [Verdict(a, t) for a, t in zip(accepted, tokens)]


def _accepts(u: float, p: float, q: float) -> bool:
    """The acceptance test, u < min(1, p / q), without a division (q > 0 for a token drawn from q)."""
    return u * q < p


def _one_hot(tokens: Sequence[int], vocab: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros(len(tokens), vocab, device=device)
    out[torch.arange(len(tokens), device=device), to_device(list(tokens), torch.long, device)] = 1.0
    return out
