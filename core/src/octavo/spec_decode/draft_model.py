"""Draft-model proposals: a second model (same tokenizer) runs k autoregressive steps per target step.

The draft is a second step runner over the same platform, with a KV cache and a block manager of
its own (as many blocks as the target's, no prefix caching). Per request it remembers which
tokens its cache holds; each round it first catches up with the tokens the target accepted (and
the one drawn after them), reusing its cache up to where it still agrees with the request, then
proposes k tokens, one step each, all requests batched.

Proposals are the draft's greedy choices, so the proposer's distribution q is one-hot at each
(`octavo.spec_decode.rejection`): the target's output stays exact for greedy and sampled
requests alike; a sampled request accepts a proposal with probability p(proposal).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from octavo.block_manager import BlockManager
from octavo.request import Request
from octavo.sampling_params import SamplingParams
from octavo.scheduler import ScheduledRequest, SchedulerOutput

logger = logging.getLogger("octavo")

_GREEDY = SamplingParams(temperature=0.0, max_tokens=None)


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
        self.bm = BlockManager(num_blocks, config.cache.block_size, enable_prefix_caching=False)
        self.states: dict[str, _DraftState] = {}

    def propose_batch(self, reqs: list[Request]) -> None:
        """Fill each request's `spec_token_ids` with the draft's k greedy tokens (none for a
        request the draft's cache has no room for)."""
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
        for _ in range(self.k):
            if not live:
                break
            scheduled = [
                ScheduledRequest(
                    request_id=req.request_id,
                    token_ids=feeds[req.request_id],
                    start_pos=len(st.tokens),
                    block_ids=st.block_ids,
                    sample=True,
                    sampling_params=_GREEDY,
                    all_token_ids=req.token_ids,
                    num_prompt_tokens=req.num_prompt_tokens,
                )
                for req, st in live
            ]
            out = self.runner.execute(SchedulerOutput(scheduled, sum(len(s.token_ids) for s in scheduled)), {})
            still = []
            for req, st in live:
                st.tokens += feeds[req.request_id]
                token = out.sampled.get(req.request_id)
                if token is None or token >= self.vocab_size:
                    continue  # this request's proposals end here
                drafts[req.request_id].append(token)
                feeds[req.request_id] = [token]
                still.append((req, st))
            live = still
        for req in reqs:
            req.spec_token_ids = drafts.get(req.request_id, [])

    def forget(self, request_id: str) -> None:
        st = self.states.pop(request_id, None)
        if st is not None:
            self.bm.free(st.block_ids)
        self.runner.forget(request_id)

    def shutdown(self) -> None:
        self.runner.shutdown()
