"""Beam search on top of the engine (vLLM's `LLM.beam_search` shape).

Each step asks the engine for one greedy token per live beam with the top 2 x
beam_width logprobs, then keeps the best beam_width continuations. Beams share their
common prefix's KV blocks through the prefix cache: a child beam's request finds its
parent's full blocks cached and computes only the last partial block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from octavo.sampling_params import SamplingParams


@dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.beam_width, int) or not 1 <= self.beam_width <= 10:
            raise ValueError(f"invalid beam_width={self.beam_width!r}: must be an integer in [1, 10]")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"invalid max_tokens={self.max_tokens!r}: must be an integer >= 1")
        if self.temperature != 0.0:
            raise ValueError("beam search is deterministic: temperature must be 0")


@dataclass
class BeamSearchSequence:
    tokens: list[int]  # prompt + generated
    logprobs: list[float] = field(default_factory=list)  # of each generated token
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | None = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


def _score(seq: BeamSearchSequence, num_generated: int, length_penalty: float) -> float:
    return seq.cum_logprob / (max(num_generated, 1) ** length_penalty)


class BeamSearcher:
    """The beam bookkeeping, independent of how the one-token steps are run.

    Loop: `pending()` lists the beams to extend (as token-id prompts), the caller runs
    each with `step_params` and hands the outputs to `advance()`, until `done`.
    """

    def __init__(self, prompt_ids: list[list[int]], params: BeamSearchParams, eos_token_ids, tokenizer) -> None:
        self.params = params
        self.starts = prompt_ids
        self.eos = set(eos_token_ids)
        self.tokenizer = tokenizer
        self.step_params = SamplingParams(
            temperature=0.0, max_tokens=1, logprobs=2 * params.beam_width, ignore_eos=True
        )
        self.live = [[BeamSearchSequence(tokens=list(ids))] for ids in prompt_ids]
        self.finished = [[] for _ in prompt_ids]  # type: list[list[BeamSearchSequence]]
        self.closed = [False] * len(prompt_ids)
        self.steps = 0
        self._todo: list[tuple[int, BeamSearchSequence]] = []

    @property
    def done(self) -> bool:
        return self.steps >= self.params.max_tokens or all(c or not live for c, live in zip(self.closed, self.live))

    def pending(self) -> list[dict]:
        self._todo = [(i, b) for i in range(len(self.starts)) if not self.closed[i] for b in self.live[i]]
        return [{"prompt_token_ids": b.tokens} for _, b in self._todo]

    def advance(self, outputs) -> None:
        """`outputs`: one RequestOutput per pending beam, in order."""
        width, lp_pen = self.params.beam_width, self.params.length_penalty
        candidates: list[list[BeamSearchSequence]] = [[] for _ in self.starts]
        for (i, beam), out in zip(self._todo, outputs):
            for tid, lp in out.outputs[0].logprobs[0].items():
                candidates[i].append(
                    BeamSearchSequence(
                        tokens=beam.tokens + [tid],
                        logprobs=beam.logprobs + [lp.logprob],
                        cum_logprob=beam.cum_logprob + lp.logprob,
                    )
                )
        self.steps += 1
        for i, cands in enumerate(candidates):
            if self.closed[i]:
                continue
            cands.sort(key=lambda s: s.cum_logprob, reverse=True)
            nxt = []
            for rank, c in enumerate(cands[: 2 * width]):
                if c.tokens[-1] in self.eos and not self.params.ignore_eos:
                    if rank < width:  # an EOS outside the top beam_width is not a finished beam
                        c.finish_reason, c.stop_reason = "stop", c.tokens[-1]
                        self.finished[i].append(c)
                else:
                    nxt.append(c)
                if len(nxt) == width:
                    break
            self.live[i] = nxt
            # close once no live beam can beat the worst of beam_width finished ones
            if len(self.finished[i]) >= width:
                worst = min(_score(s, len(s.tokens) - len(self.starts[i]), lp_pen) for s in self.finished[i])
                best_live = max((_score(s, self.steps, lp_pen) for s in nxt), default=float("-inf"))
                self.closed[i] = best_live < worst

    def results(self) -> list[BeamSearchOutput]:
        out = []
        for i, start in enumerate(self.starts):
            live = [] if self.closed[i] else self.live[i]
            for s in live:
                s.finish_reason = "length"
            pool = self.finished[i] + live
            pool.sort(key=lambda s: _score(s, len(s.tokens) - len(start), self.params.length_penalty), reverse=True)
            best = pool[: self.params.beam_width]
            for s in best:
                s.text = self.tokenizer.decode(s.tokens[len(start) :], skip_special_tokens=True)
            out.append(BeamSearchOutput(best))
        return out


def beam_search(llm, prompts: list, params: BeamSearchParams) -> list[BeamSearchOutput]:
    engine = llm.llm_engine
    searcher = BeamSearcher([engine._tokenize(p)[1] for p in prompts], params, engine.eos_token_ids, engine.tokenizer)
    while not searcher.done:
        searcher.advance(llm.generate(searcher.pending(), searcher.step_params, use_tqdm=False))
    return searcher.results()
