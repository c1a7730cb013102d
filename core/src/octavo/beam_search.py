"""Beam search on top of the engine (vLLM's `LLM.beam_search` shape).

Each step asks the engine for one greedy token per live beam with the top 2 x
beam_width logprobs, then keeps the best beam_width continuations. Beams share their
common prefix's KV blocks through the prefix cache: a child beam's request finds its
parent's full blocks cached and computes only the last partial block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

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
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[int] = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


def _score(seq: BeamSearchSequence, num_generated: int, length_penalty: float) -> float:
    return seq.cum_logprob / (max(num_generated, 1) ** length_penalty)


def beam_search(llm, prompts: list, params: BeamSearchParams) -> list[BeamSearchOutput]:
    engine = llm.llm_engine
    eos = set(engine.eos_token_ids)
    width = params.beam_width
    step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=2 * width, ignore_eos=True)
    starts = [engine._tokenize(p)[1] for p in prompts]
    live = [[BeamSearchSequence(tokens=list(ids))] for ids in starts]
    done: list[list[BeamSearchSequence]] = [[] for _ in prompts]
    finished_prompt = [False] * len(prompts)
    for step in range(params.max_tokens):
        todo = [(i, b) for i in range(len(prompts)) if not finished_prompt[i] for b in live[i]]
        if not todo:
            break
        outs = llm.generate([{"prompt_token_ids": b.tokens} for _, b in todo], step_params, use_tqdm=False)
        candidates: list[list[BeamSearchSequence]] = [[] for _ in prompts]
        for (i, beam), out in zip(todo, outs):
            for tid, lp in out.outputs[0].logprobs[0].items():
                candidates[i].append(BeamSearchSequence(
                    tokens=beam.tokens + [tid], logprobs=beam.logprobs + [lp.logprob],
                    cum_logprob=beam.cum_logprob + lp.logprob))
        generated = step + 1
        for i, cands in enumerate(candidates):
            if finished_prompt[i]:
                continue
            cands.sort(key=lambda s: s.cum_logprob, reverse=True)
            nxt = []
            for rank, c in enumerate(cands[: 2 * width]):
                if c.tokens[-1] in eos and not params.ignore_eos:
                    if rank < width:  # an EOS outside the top beam_width is not a finished beam
                        c.finish_reason, c.stop_reason = "stop", c.tokens[-1]
                        done[i].append(c)
                else:
                    nxt.append(c)
                if len(nxt) == width:
                    break
            live[i] = nxt
            # stop once no live beam can beat the worst of beam_width finished ones
            if len(done[i]) >= width:
                worst = min(_score(s, len(s.tokens) - len(starts[i]), params.length_penalty) for s in done[i])
                best_live = max((_score(s, generated, params.length_penalty) for s in nxt), default=float("-inf"))
                finished_prompt[i] = best_live < worst
    results = []
    tok = engine.tokenizer
    for i in range(len(prompts)):
        for s in live[i]:
            s.finish_reason = "length"
        pool = done[i] + (live[i] if not finished_prompt[i] else [])
        pool.sort(key=lambda s: _score(s, len(s.tokens) - len(starts[i]), params.length_penalty), reverse=True)
        best = pool[:width]
        for s in best:
            s.text = tok.decode(s.tokens[len(starts[i]):], skip_special_tokens=True)
        results.append(BeamSearchOutput(best))
    return results
