"""Per-request grammar state on the host: matchers, their bitmasks, the tokens fed back."""

from __future__ import annotations

import enum
import os
from typing import Any

import torch

from octavo.sampling_params import StructuredOutputsParams
from octavo.structured_output.compiler import GrammarCache


class Accepted(enum.Enum):
    """What feeding a sampled token to a request's grammar did."""

    OK = 0
    TERMINATED = 1  # the grammar is complete: the request ends
    REJECTED = 2  # the token does not fit the grammar (a bitmask was bypassed): the request fails


class _RequestGrammar:
    __slots__ = ("matcher", "reasoning")

    def __init__(self, matcher: Any, reasoning: bool) -> None:
        self.matcher = matcher
        # still inside the reasoning (before `</think>`): the grammar has not started
        self.reasoning = reasoning


class StructuredOutputManager:
    """The engine's structured-output state: one matcher per constrained request (by the
    scheduler's request id), compiled grammars shared through a `GrammarCache`.

    `reasoning_end`: the token that ends a reasoning model's thinking (None: no reasoning
    parser); a request's grammar applies only after it, whether it is in the prompt (the
    chat template closed the thinking) or sampled."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: tuple[int, ...],
        reasoning_end: int | None = None,
        reasoning_start: int | None = None,
    ) -> None:
        self.cache = GrammarCache(tokenizer, vocab_size, stop_token_ids)
        self.vocab_size = vocab_size
        self.reasoning_end = reasoning_end
        self.reasoning_start = reasoning_start
        self._requests: dict[str, _RequestGrammar] = {}
        self._batch: Any = None  # xgrammar's threaded bitmask filler, made at first use

    def compile(self, so: StructuredOutputsParams) -> Any:
        """Compile (or find) the grammar; ValueError naming what is wrong."""
        return self.cache.compile(so)

    def add(self, request_id: str, grammar: Any, prompt_ids: list[int]) -> None:
        import xgrammar as xgr

        self._requests[request_id] = _RequestGrammar(xgr.GrammarMatcher(grammar), self._reasoning(prompt_ids))
        if self._batch is None:
            self._batch = xgr.BatchGrammarMatcher(max_threads=max(1, min(8, (os.cpu_count() or 2) // 2)))

    def _reasoning(self, prompt_ids: list[int]) -> bool:
        """Whether a request starts inside the reasoning: there is a reasoning parser, and the
        prompt does not end its thinking itself (an end token after the last start token)."""
        if self.reasoning_end is None:
            return False
        ends = [i for i, t in enumerate(prompt_ids) if t == self.reasoning_end]
        starts = [i for i, t in enumerate(prompt_ids) if t == self.reasoning_start]
        return not ends or (bool(starts) and starts[-1] > ends[-1])

    def remove(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def constrains(self, scheduler_output: Any) -> bool:
        """Whether a row the step samples belongs to a request with a grammar."""
        return bool(self._requests) and any(
            s.sample and s.request_id in self._requests for s in scheduler_output.scheduled
        )

    def accept(self, request_id: str, token: int) -> Accepted:
        """Feed a request's sampled token to its grammar (reasoning tokens skip it)."""
        g = self._requests[request_id]
        if g.reasoning:
            if token == self.reasoning_end:
                g.reasoning = False
            return Accepted.OK
        if not g.matcher.accept_token(token):
            return Accepted.REJECTED
        return Accepted.TERMINATED if g.matcher.is_terminated() else Accepted.OK

    def bitmask(self, request_ids: list[str]) -> torch.Tensor | None:
        """The next token's bitmask per row (int32 [rows, ceil(V / 32)], host), every token
        allowed in rows without an active grammar; None when no row has one."""
        rows, matchers = [], []
        for i, rid in enumerate(request_ids):
            g = self._requests.get(rid)
            # a terminated grammar's request has ended: its row's token is dropped
            if g is not None and not g.reasoning and not g.matcher.is_terminated():
                rows.append(i)
                matchers.append(g.matcher)
        if not rows:
            return None
        import xgrammar as xgr

        mask = xgr.allocate_token_bitmask(len(request_ids), self.vocab_size)  # all ones: every token allowed
        self._batch.batch_fill_next_token_bitmask(matchers, mask, indices=rows)
        return mask
