"""The engine's side of speculative decoding: proposals before each schedule, counters after.

Which requests speculate: every decoding request except those with structured outputs (a
proposal would have to pass the grammar first; they opt out automatically). Proposals are made
only for a request whose every token but the last is computed and none is pending, so the
proposer sees the whole context.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from octavo.request import Request
from octavo.scheduler import SchedulerOutput
from octavo.spec_decode.config import SpeculativeConfig
from octavo.spec_decode.metrics import SpecDecodeStats
from octavo.spec_decode.ngram import NgramProposer


def speculates(req: Request) -> bool:
    """Whether a request takes part (the opt-out rule)."""
    return req.sampling_params.structured_outputs is None


class Speculator:
    def __init__(
        self,
        config: SpeculativeConfig,
        engine_args: Any,
        num_blocks: int,
        vocab_size: int,
        max_model_len: int,
        target_runner: Any = None,
    ) -> None:
        """The target's options, KV-cache size, vocabulary and context: a draft model runs with
        the same options (load format and dtype included), as many blocks and the same context.
        An EAGLE head reads the target runner's hidden states and model."""
        self.config = config
        self.stats = SpecDecodeStats(config.num_speculative_tokens)
        self.ngram: NgramProposer | None = None
        self.draft = None
        self.eagle = None
        if config.method == "ngram":
            self.ngram = NgramProposer(
                config.num_speculative_tokens, config.prompt_lookup_max, config.prompt_lookup_min
            )
        elif config.method in ("eagle", "eagle3"):
            from octavo.spec_decode.eagle import EagleProposer

            assert config.model is not None  # validated
            k = config.num_speculative_tokens
            self.eagle = EagleProposer(k, config.method, config.model, target_runner, vocab_size)
        else:
            from octavo.spec_decode.draft_model import DraftModelProposer  # loads a model: only when asked

            draft_args = dataclasses.replace(
                engine_args,
                model=config.model,
                tokenizer=None,
                speculative_config=None,
                enable_prefix_caching=False,
                num_gpu_blocks_override=num_blocks,
                max_model_len=max_model_len,
            )
            self.draft = DraftModelProposer(config.num_speculative_tokens, draft_args, num_blocks, vocab_size)
        # seconds spent proposing (a draft model's forwards), for the benchmarks
        self.propose_seconds = 0.0

    def propose(self, running: Iterable[Request]) -> None:
        """Fill `spec_token_ids` of the running requests that decode next."""
        t0 = time.perf_counter()
        reqs = [
            r for r in running if r.num_pending == 0 and r.num_computed_tokens + 1 == r.num_tokens and speculates(r)
        ]
        if self.ngram is not None:
            for req in reqs:
                req.spec_token_ids = self.ngram.propose(req.token_ids)
        elif self.eagle is not None:
            self.eagle.propose_batch(reqs)
        elif reqs:
            assert self.draft is not None  # one proposer or another
            self.draft.propose_batch(reqs)
        self.propose_seconds += time.perf_counter() - t0

    def observe(self, sched_out: SchedulerOutput, num_accepted: dict[str, int]) -> None:
        """Count a finished step's verified drafts (a request that failed has no entry); an
        EAGLE head keeps the features of the tokens that stand."""
        if self.eagle is not None:
            self.eagle.observe(sched_out, num_accepted)
        for s in sched_out.scheduled:
            if s.spec_token_ids and s.request_id in num_accepted:
                self.stats.observe(len(s.spec_token_ids), num_accepted[s.request_id])

    def forget(self, request_id: str) -> None:
        """A request ended: a draft model frees its cache blocks, an EAGLE head its state."""
        if self.draft is not None:
            self.draft.forget(request_id)
        if self.eagle is not None:
            self.eagle.forget(request_id)

    def shutdown(self) -> None:
        if self.draft is not None:
            self.draft.shutdown()
        if self.eagle is not None:
            self.eagle.shutdown()
