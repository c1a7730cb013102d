"""The offline API: `LLM(model=...).generate(prompts, sampling_params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from octavo import vllm_options
from octavo.engine import LLMEngine, PromptType
from octavo.engine_args import EngineArgs
from octavo.lora.request import LoRARequest
from octavo.multimodal import MultiModalInputs
from octavo.outputs import RequestOutput
from octavo.pooling.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import RequestOutputKind, SamplingParams

#: vLLM's `runner` / `convert` values that build a pooling engine (embeddings, classifiers)
_POOLING = {("pooling", "auto"), ("pooling", "embed"), ("pooling", "classify"), ("auto", "embed"), ("auto", "classify")}


class LLM:
    """Generate text offline, batching all prompts together.

    >>> llm = LLM(model="smollm2", device="cpu", dtype="float32")
    >>> llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))[0].outputs[0].text

    Takes EngineArgs' options as keywords, under vLLM's names; vLLM's other keywords are accepted
    where they cannot change results and refused by name otherwise (`octavo.vllm_options`).

    `runner="pooling"` (or `convert="embed"`) serves a pooling model instead: `embed`,
    `classify`, `score` and `encode` (octavo.pooling); `pooling_type` ("LAST", "MEAN",
    "CLS") overrides the checkpoint's pooling.
    """

    def __init__(
        self,
        model: str = "smollm2",
        runner: str = "auto",
        convert: str = "auto",
        pooling_type: str | None = None,
        **kwargs,
    ) -> None:
        kwargs = vllm_options.split_engine_kwargs(kwargs, set(EngineArgs.__dataclass_fields__))
        args = EngineArgs(model=model, **kwargs)
        self.llm_engine: LLMEngine
        if (runner, convert) in _POOLING:
            from octavo.pooling.engine import PoolingEngine

            self.llm_engine = PoolingEngine(args, pooling_type)
        elif runner in ("auto", "generate") and convert in ("auto", "none") and pooling_type is None:
            self.llm_engine = LLMEngine.from_engine_args(args)
        else:
            raise ValueError(
                f"runner={runner!r} convert={convert!r} pooling_type={pooling_type!r} is not supported; use "
                "runner='generate' (the default), or runner='pooling' / convert='embed' for embeddings and classifiers"
            )
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
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """`lora_request`: the LoRA adapter of every prompt, or one per prompt (None: the base model)."""
        if isinstance(prompts, (str, dict, MultiModalInputs)):
            prompts = [prompts]
        prompts = list(prompts)
        if lora_request is None or isinstance(lora_request, LoRARequest):
            loras = [lora_request] * len(prompts)
        else:
            loras = list(lora_request)
            if len(loras) != len(prompts):
                raise ValueError(f"got {len(loras)} LoRA requests for {len(prompts)} prompts")
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
            for prompt, p, lora in zip(prompts, params, loras):
                p = p.clone()
                p.output_kind = RequestOutputKind.FINAL_ONLY
                rid = str(next(self._counter))
                engine.add_request(rid, prompt, p, lora_request=lora)
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
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"}) or a list of them; `lora_request` as
        in `generate`."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        processor = getattr(self.llm_engine, "mm_processor", None)
        if processor is not None:  # a vision-language model: image parts become its placeholders
            # the template's text carries its special tokens: tokenized without adding more
            chats = [processor.chat_prompt(c, chat_template) for c in convs]
            mm = [processor.process(text, {"image": images}, add_special_tokens=False) for text, images in chats]
            return self.generate(mm, sampling_params, use_tqdm, lora_request=lora_request)
        tok = self.llm_engine.tokenizer
        prompts = [
            {
                "prompt_token_ids": tok.apply_chat_template(
                    c, add_generation_prompt=True, tokenize=True, chat_template=chat_template, return_dict=False
                )
            }
            for c in convs
        ]
        return self.generate(prompts, sampling_params, use_tqdm, lora_request=lora_request)

    # ---- pooling models (runner="pooling") ------------------------------------------------
    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        use_tqdm: bool = True,
        truncate_prompt_tokens: int | None = None,
        pooling_task: str = "encode",
    ) -> list[PoolingRequestOutput]:
        """Pool each prompt: an embedding (embedders) or class probabilities (classifiers);
        with pooling_task "token_embed" / "token_classify", one such row per prompt token."""
        from octavo.pooling.engine import PoolingEngine

        engine = self.llm_engine
        if not isinstance(engine, PoolingEngine):
            raise ValueError(f"{pooling_task} needs a pooling model: LLM(model, runner='pooling')")
        if isinstance(prompts, (str, dict, MultiModalInputs)):
            prompts = [prompts]
        prompts = list(prompts)
        if isinstance(pooling_params, Sequence):
            params = list(pooling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} pooling params for {len(prompts)} prompts")
        else:
            params = [pooling_params or PoolingParams()] * len(prompts)
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                p = p.clone()
                p.task = pooling_task
                if truncate_prompt_tokens is not None:
                    p.truncate_prompt_tokens = truncate_prompt_tokens
                rid = str(next(self._counter))
                engine.add_pooling_request(rid, prompt, p)
                ids.append(rid)
        except Exception:
            engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)  # type: ignore[return-value]

    def embed(self, prompts, pooling_params=None, use_tqdm: bool = True, truncate_prompt_tokens=None):
        """Each prompt's embedding (vLLM's `LLM.embed`)."""
        outs = self.encode(prompts, pooling_params, use_tqdm, truncate_prompt_tokens, "embed")
        return [EmbeddingRequestOutput.from_base(o) for o in outs]

    def classify(self, prompts, pooling_params=None, use_tqdm: bool = True, truncate_prompt_tokens=None):
        """Each prompt's class probabilities (vLLM's `LLM.classify`; a `*ForSequenceClassification` model)."""
        outs = self.encode(prompts, pooling_params, use_tqdm, truncate_prompt_tokens, "classify")
        return [ClassificationRequestOutput.from_base(o) for o in outs]

    def score(
        self, data_1, data_2, use_tqdm: bool = True, truncate_prompt_tokens=None, pooling_params=None
    ) -> list[ScoringRequestOutput]:
        """How well each text of `data_2` matches `data_1` (one text, or as many as data_2,
        paired in order): an embedder's cosine similarity, or a cross-encoder's (a one-label
        classifier's) probability for the pair tokenized together (vLLM's `LLM.score`)."""
        from octavo.pooling.engine import PoolingEngine
        from octavo.pooling.pairs import pair_token_ids

        data_1 = [data_1] if isinstance(data_1, (str, dict)) else list(data_1)
        data_2 = [data_2] if isinstance(data_2, (str, dict)) else list(data_2)
        n = len(data_2)
        if len(data_1) not in (1, n) or not data_2:
            raise ValueError(f"score takes one text or as many as data_2 ({n}); got {len(data_1)}")
        engine = self.llm_engine
        if isinstance(engine, PoolingEngine) and engine.classifier is not None:
            if engine.classifier.out_features != 1:
                raise ValueError("score needs an embedder or a classifier with one label (a cross-encoder)")
            tok = self.get_tokenizer()
            firsts = data_1 * n if len(data_1) == 1 else data_1
            hf_config = engine.model_config.hf_config
            pairs = [{"prompt_token_ids": pair_token_ids(tok, hf_config, a, b)} for a, b in zip(firsts, data_2)]
            outs = self.encode(pairs, pooling_params, use_tqdm, truncate_prompt_tokens, "score")
            return [
                ScoringRequestOutput(o.request_id, ScoringOutput(float(o.outputs.data[0])), o.prompt_token_ids)
                for o in outs
            ]
        # an embedder: every text embedded once, in one batch
        outs = self.encode(data_1 + data_2, pooling_params, use_tqdm, truncate_prompt_tokens, "embed")
        firsts, seconds = outs[: len(data_1)], outs[len(data_1) :]
        firsts = firsts * n if len(firsts) == 1 else firsts
        return [
            ScoringRequestOutput(
                f"{a.request_id}-{b.request_id}",
                ScoringOutput(float(torch.nn.functional.cosine_similarity(a.outputs.data, b.outputs.data, dim=0))),
                a.prompt_token_ids + b.prompt_token_ids,
            )
            for a, b in zip(firsts, seconds)
        ]

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
