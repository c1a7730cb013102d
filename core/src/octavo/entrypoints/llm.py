"""The offline API: `LLM(model=...).generate(prompts, sampling_params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from octavo import vllm_options
from octavo.engine import LLMEngine, PromptType
from octavo.engine_args import EngineArgs
from octavo.outputs import RequestOutput
from octavo.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    """Generate text offline, batching all prompts together.

    >>> llm = LLM(model="smollm2", device="cpu", dtype="float32")
    >>> llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))[0].outputs[0].text

    Takes EngineArgs' options as keywords, under vLLM's names; vLLM's other keywords are accepted
    where they cannot change results and refused by name otherwise (`octavo.vllm_options`).
    """

    def __init__(self, model: str = "smollm2", **kwargs) -> None:
        kwargs = vllm_options.split_engine_kwargs(kwargs, set(EngineArgs.__dataclass_fields__))
        self.llm_engine = LLMEngine.from_engine_args(EngineArgs(model=model, **kwargs))
        self._counter = itertools.count()

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes now (deleting the LLM does it too)."""
        self.llm_engine.shutdown()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The sampling parameters of a call that passes none: the model's generation_config.json
        defaults (--generation-config), over SamplingParams' own."""
        return SamplingParams(**self.llm_engine.model_config.generation.sampling)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        engine = self.llm_engine
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                p = p.clone()
                p.output_kind = RequestOutputKind.FINAL_ONLY
                rid = str(next(self._counter))
                engine.add_request(rid, prompt, p)
                ids.append(rid)
        except Exception:
            engine.abort_request(ids)  # a bad prompt must not leave the others queued
            raise
        return self._run(ids, use_tqdm)

    def beam_search(self, prompts, params):
        """Beam search over one or more prompts (vLLM's API): a BeamSearchOutput per prompt,
        whose `sequences` are the beam_width best, best first."""
        from octavo.beam_search import beam_search

        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        return beam_search(self, list(prompts), params)

    def chat(
        self,
        messages,
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"}) or a list of them."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tok = self.llm_engine.tokenizer
        prompts = [
            {
                "prompt_token_ids": tok.apply_chat_template(
                    c, add_generation_prompt=True, tokenize=True, chat_template=chat_template, return_dict=False
                )
            }
            for c in convs
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        pending = set(ids)
        try:
            while pending:
                for out in engine.step():
                    if out.finished and out.request_id in pending:
                        results[out.request_id] = out
                        pending.discard(out.request_id)
                        if bar is not None:
                            bar.update(1)
                if pending and not engine.has_unfinished_requests():
                    raise RuntimeError(f"requests {sorted(pending)[:5]} vanished without finishing")
        except BaseException:
            engine.abort_request(list(pending))
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[i] for i in ids]
