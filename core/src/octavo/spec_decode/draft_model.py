"""Draft-model proposals: a second model (same tokenizer) runs k autoregressive steps per target step.

The draft is a second step runner over the same platform, with a KV cache and a block manager of
its own (as many blocks as the target's, no prefix caching). Per request it remembers which
tokens its cache holds; each round it first catches up with the tokens the target accepted (and
the one drawn after them), reusing its cache up to where it still agrees with the request, then
proposes k tokens, one step each, all requests batched.

Each proposal is drawn from q, the draft's distribution after the same processing the target's
p gets (the request's temperature, top-k, top-p, min-p, penalties counting the proposals before
it, min_tokens' bans: `Sampler.distribution`), with the draft runner's own seeded generators;
q goes with the proposals to verification (`Request.spec_probs`), whose rejection rule keeps the
target's distribution exact. A greedy request's q is one-hot at the draft's argmax (not kept).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from octavo.block_manager import BlockManager
from octavo.request import Request
from octavo.sampling import Sampler
from octavo.scheduler import ScheduledRequest, SchedulerOutput
from octavo.transfer import to_device


@dataclasses.dataclass
class _DraftState:
    tokens: list[int]  # the tokens whose KV the draft's cache holds, in order
    block_ids: list[int]


class DraftModelProposer:
    def __init__(self, num_speculative_tokens: int, engine_args: Any, num_blocks: int, vocab_size: int) -> None:
        """Load the draft (`engine_args`: the target's options with the draft as the model) and
        give it `num_blocks` blocks of KV cache."""
        self.k = num_speculative_tokens
        self.vocab_size = vocab_size  # the target's: a draft token past it is never proposed
        config, platform, source = engine_args.create_config()
        self.runner = platform.make_runner(config, source)
        self.runner.initialize_kv_cache(num_blocks)
        # the same seed must not give the draft the target's uniforms: a proposal drawn with the
        # uniform that drew the token before it, or that later tests it, is not drawn from q
        self.runner.sampler.stream = "draft"
        self.bm = BlockManager(num_blocks, config.cache.block_size, enable_prefix_caching=False)
        self.states: dict[str, _DraftState] = {}

    def propose_batch(self, reqs: list[Request]) -> None:
        """Fill each request's `spec_token_ids` with k tokens drawn from the draft (none for a
        request the draft's cache has no room for), and `spec_probs` with their q rows."""
        feeds: dict[str, list[int]] = {}
        live: list[tuple[Request, _DraftState]] = []
        for req in reqs:
            st = self.states.setdefault(req.request_id, _DraftState([], []))
            # reuse the cache up to where it agrees with the request; feed at least the last token
            n = 0
            limit = min(len(st.tokens), req.num_tokens - 1)
            while n < limit and st.tokens[n] == req.token_ids[n]:
                n += 1
            del st.tokens[n:]
            # this round writes the request's tokens and k - 1 proposals
            if not self.bm.allocate(st.block_ids, req.num_tokens + self.k - 1):
                continue
            feeds[req.request_id] = req.token_ids[n:]
            live.append((req, st))
        drafts: dict[str, list[int]] = {req.request_id: [] for req, _ in live}
        q_rows: dict[str, list[torch.Tensor]] = {req.request_id: [] for req, _ in live}
        for j in range(self.k):
            if not live:
                break
            scheduled = [
                ScheduledRequest(
                    request_id=req.request_id,
                    token_ids=feeds[req.request_id],
                    start_pos=len(st.tokens),
                    block_ids=st.block_ids,
                    sample=True,
                    sampling_params=req.sampling_params,
                    all_token_ids=req.token_ids,
                    num_prompt_tokens=req.num_prompt_tokens,
                )
                for req, st in live
            ]
            logits = self.runner.last_logits(SchedulerOutput(scheduled, sum(len(s.token_ids) for s in scheduled)))
            q, tokens = draw_proposals(
                self.runner.sampler, logits, [req for req, _ in live], drafts, j, self.vocab_size
            )
            for i, (req, st) in enumerate(live):
                st.tokens += feeds[req.request_id]
                drafts[req.request_id].append(tokens[i])
                q_rows[req.request_id].append(q[i])
                feeds[req.request_id] = [tokens[i]]
        for req in reqs:
            rid = req.request_id
            req.spec_token_ids = drafts.get(rid, [])
            greedy = req.sampling_params.greedy or not req.spec_token_ids
            req.spec_probs = None if greedy else torch.stack(q_rows[rid])

    def forget(self, request_id: str) -> None:
        st = self.states.pop(request_id, None)
        if st is not None:
            self.bm.free(st.block_ids)
        self.runner.forget(request_id)

    def shutdown(self) -> None:
        self.runner.shutdown()


def draw_proposals(
    sampler: Sampler, logits: torch.Tensor, reqs: list[Request], drafts: dict[str, list[int]], j: int, vocab_size: int
) -> tuple[torch.Tensor, list[int]]:
    """q over the target's vocabulary (a proposer's columns past it cut off, missing ones at
    probability 0) after the target's processing of proposal j, and one token drawn from it per
    request with `sampler`: the proposer's own, whose seeded streams are its own."""
    v = logits.shape[1]
    if v > vocab_size:
        logits = logits[:, :vocab_size]
    elif v < vocab_size:
        logits = torch.nn.functional.pad(logits, (0, vocab_size - v), value=float("-inf"))
    histories, bans = [], []
    for req in reqs:
        p = req.sampling_params
        done = drafts[req.request_id]
        histories.append((req.token_ids + done if p.penalized else req.token_ids, req.num_prompt_tokens))
        bans.append(req.num_output_tokens + j < p.min_tokens)
    params = [req.sampling_params for req in reqs]
    q = sampler.distribution(logits.float(), params, histories, bans)
    u = [sampler.uniform(req.request_id, req.sampling_params)() for req in reqs]
    tokens = sampler.draw(q.log(), None, to_device(u, torch.float32, q.device)).tolist()
    return q, tokens
