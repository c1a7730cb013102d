"""LLMEngine: the synchronous step loop shared by the LLM class and the async server."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from octavo.block_manager import BlockManager
from octavo.detokenizer import IncrementalDetokenizer
from octavo.engine_args import EngineArgs
from octavo.kv_transfer import KVConnector, KVTransferConfig, KVTransferStats
from octavo.loader.source import load_tokenizer
from octavo.lora import LoRAError, LoRARequest
from octavo.lora.manager import LoRAManager
from octavo.multimodal import MultiModalInputError, MultiModalInputs
from octavo.multimodal.processor import MultiModalProcessor, multimodal_processor
from octavo.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from octavo.platform import StepRunner
from octavo.reasoning import reasoning_token_ids
from octavo.request import Request, RequestStatus
from octavo.sampling_params import RequestOutputKind, SamplingParams
from octavo.scheduler import Scheduler, SchedulerOutput
from octavo.spec_decode.metrics import SpecDecodeStats
from octavo.spec_decode.speculator import Speculator
from octavo.structured_output import StructuredOutputManager
from octavo.structured_output.manager import Accepted

logger = logging.getLogger("octavo")

PromptType = str | dict | MultiModalInputs  # the last: a prompt with images, processed


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions_total: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of which found cached
    # allocated KV slots holding real tokens, 0..1; walks every block table, so only computed
    # when asked for (get_stats(with_utilization=True) or get_kv_cache_utilization())
    kv_slot_utilization: float | None = None
    # compilations after warm-up (static-shape platforms: a step shape they did not compile)
    num_recompiles: int = 0
    # tokens scheduled by the last step() (prefill chunks + decodes; 0 if it scheduled none)
    step_tokens: int = 0
    # speculative decoding's counters (None without speculative_config)
    spec_decode: SpecDecodeStats | None = None
    # disaggregated prefill/decode's counters (None without kv_transfer_config)
    kv_transfer: KVTransferStats | None = None


def eos_token_ids(model_config, tokenizer) -> tuple[int, ...]:
    """The ids that end generation: the model config's, the tokenizer's and generation_config.json's."""
    ids = set()
    cfg_eos = getattr(model_config.hf_config, "eos_token_id", None)
    for e in cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]:
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    ids.update(model_config.generation.eos_token_ids)  # generation_config.json's
    return tuple(sorted(ids))


class _Sample:
    """One of the n samples of a user request: a scheduler Request plus its text state."""

    __slots__ = ("index", "req", "detok", "logprobs", "cumulative_logprob", "sent_tokens")

    def __init__(self, index: int, req: Request, detok: IncrementalDetokenizer) -> None:
        self.index = index
        self.req = req
        self.detok = detok
        self.logprobs: list[dict[int, Logprob]] | None = [] if req.sampling_params.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if self.logprobs is not None else None
        self.sent_tokens = 0


class _Group:
    """A user request: its prompt and its n samples."""

    def __init__(
        self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams, arrival: float
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.samples: list[_Sample] = []
        self.metrics = RequestMetrics(arrival_time=arrival)
        # vLLM's shape: None for the first prompt token, then {token: Logprob} per position
        self.prompt_logprobs: list | None = [None] if params.prompt_logprobs is not None else None
        self.error: str | None = None  # set when the request failed (LLMEngine._fail)

    @property
    def finished(self) -> bool:
        return all(s.req.is_finished for s in self.samples)


def _cumulative_logprob(sample: _Sample) -> float:
    assert sample.cumulative_logprob is not None  # add_request asks every ranked sample for logprobs
    return sample.cumulative_logprob


class LLMEngine:
    def __init__(self, args: EngineArgs) -> None:
        if args.data_parallel_size != 1:
            raise ValueError(
                f"data_parallel_size={args.data_parallel_size}: one engine is one replica; serve several with "
                "`octavo serve --data-parallel-size N` (engine core processes behind one API)"
            )
        t0 = time.perf_counter()
        # disaggregated prefill/decode: a bad --kv-transfer-config is refused before the model loads
        kv_transfer = None if args.kv_transfer_config is None else KVTransferConfig.parse(args.kv_transfer_config)
        self.config, self.platform, source = args.create_config()
        self.model_config = self.config.model
        self.tokenizer = load_tokenizer(source)
        # the platform's step runner (core's eager ModelRunner unless the platform brings its
        # own); it starts any tensor-parallel workers and loads the weights
        self.runner = self.platform.make_runner(self.config, source)
        try:
            num_blocks = self._num_kv_blocks()  # every rank holds its share of the heads in as many blocks
            self.runner.initialize_kv_cache(num_blocks)
        except BaseException:
            self.runner.shutdown()
            raise
        cache = self.config.cache
        self.block_manager = BlockManager(num_blocks, cache.block_size, cache.enable_prefix_caching)
        self.kv_connector: KVConnector | None = None
        if kv_transfer is not None:
            try:
                self.kv_connector = KVConnector(kv_transfer, self.runner, self.platform.attention, self.block_manager)
            except BaseException:
                self.runner.shutdown()
                raise
        sc = self.config.scheduler
        self.scheduler = Scheduler(
            self.block_manager,
            sc.max_num_seqs,
            sc.max_num_batched_tokens,
            self.model_config.max_model_len,
            chunked_prefill=sc.chunked_prefill,
            mixed_steps=sc.mixed_steps,
            max_loras=self.config.lora.max_loras if self.config.lora is not None else None,
        )
        # pipeline parallelism: up to one step per stage in flight (`_step_pipelined`)
        self._pipeline_depth = self.config.parallel.pipeline_parallel_size
        self.scheduler.pipeline_depth = self._pipeline_depth
        self._pipelined: deque[tuple[SchedulerOutput, Any]] = deque()

        self.eos_token_ids = eos_token_ids(self.model_config, self.tokenizer)
        self.vocab_size = self.model_config.hf_config.get_text_config().vocab_size
        # structured outputs: grammars per request; with a reasoning parser they start after `</think>`
        self.reasoning_parser = args.reasoning_parser
        start, end = reasoning_token_ids(args.reasoning_parser, self.tokenizer)
        self.structured = StructuredOutputManager(self.tokenizer, self.vocab_size, self.eos_token_ids, end, start)
        # vision-language models: the checkpoint's processor turns a prompt's images into inputs
        self.mm_processor = self._multimodal_processor()
        # speculative decoding: proposals before each schedule (octavo.spec_decode)
        self.speculator = None
        if self.config.speculative is not None:
            nb, max_len = self.block_manager.num_blocks, self.model_config.max_model_len
            self.speculator = Speculator(self.config.speculative, args, nb, self.vocab_size, max_len, self.runner)
        self.groups: dict[str, _Group] = {}
        self.sample_of: dict[str, _Sample] = {}
        self.group_of: dict[str, _Group] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.step_tokens = 0
        # the last step's new tokens, turned into outputs during the next step
        self._unprocessed: tuple[list[tuple[Request, int, Any]], float] | None = None
        # async scheduling: the launched step the host has not waited for yet
        self._inflight: tuple[SchedulerOutput, Any] | None = None
        # outputs of requests that failed alone since the last step returned (LLMEngine._fail)
        self._failed_outputs: list[RequestOutput] = []
        logger.info("engine ready on %s in %.2f s", self.platform.name, time.perf_counter() - t0)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        return cls(args)

    def shutdown(self) -> None:
        """Release the runner (tensor-parallel workers, compiled programs; idempotent: garbage
        collection and interpreter exit do it too). The engine cannot step afterwards."""
        if getattr(self, "runner", None) is not None:
            self.runner.shutdown()
        connector = getattr(self, "kv_connector", None)
        if connector is not None:
            connector.shutdown()
            self.kv_connector = None
        speculator = getattr(self, "speculator", None)
        if speculator is not None:
            speculator.shutdown()

    def _num_kv_blocks(self) -> int:
        """As many blocks as the device's budget holds at the attention back end's price per
        block (summed over layers), or the user's override."""
        cache = self.config.cache
        per_block = self.runner.kv_cache_bytes_per_block()
        if cache.num_blocks is not None:
            num_blocks = cache.num_blocks
        else:
            budget = self.runner.kv_cache_budget_bytes()
            num_blocks = budget // per_block
        max_len = self.model_config.max_model_len
        if num_blocks * cache.block_size < max_len and cache.num_blocks is None:
            # refused here, not at the first long request: a request of max_model_len could never run
            need = -(-max_len // cache.block_size) * per_block
            raise ValueError(
                f"the KV cache holds {num_blocks * cache.block_size} tokens, fewer than max_model_len={max_len}: "
                f"its budget of {budget} bytes buys {num_blocks} blocks of {cache.block_size} tokens at {per_block} "
                f"bytes each, and one request of max_model_len needs {need} bytes; raise --kv-cache-memory / "
                "--gpu-memory-utilization or lower --max-model-len"
            )
        tokens = num_blocks * cache.block_size
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB, %d bytes a token); max concurrency at %d "
            "tokens/request: %.1fx",
            num_blocks,
            cache.block_size,
            tokens,
            num_blocks * per_block / 2**30,
            per_block // cache.block_size,  # every layer's, as the back end prices them (MLA: the latent's)
            max_len,
            tokens / max_len,
        )
        return num_blocks

    def _multimodal_processor(self) -> MultiModalProcessor | None:
        processor = multimodal_processor(self.model_config, self.tokenizer)
        if processor is not None and getattr(self.runner, "encoder_cache", None) is None:
            raise ValueError(
                f"vision-language models are not supported on platform {self.platform.name!r}: its step runner "
                f"({type(self.runner).__name__}) does not run core's vision encoders"
            )
        return processor

    def process_multimodal(self, prompt: dict) -> MultiModalInputs:
        """A prompt {"prompt": text, "multi_modal_data": {"image": ...}} as the engine takes it:
        placeholders expanded, images preprocessed and hashed (MultiModalInputError where
        they cannot be). Pass the result to `add_request` as the prompt."""
        if self.mm_processor is None:
            raise MultiModalInputError("this model takes text only: multi_modal_data needs a vision-language model")
        return self.mm_processor.process(prompt.get("prompt"), prompt["multi_modal_data"])

    # ---- requests -------------------------------------------------------------------------
    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                raise ValueError("prompt_token_ids must be a list of integers")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
            return prompt.get("prompt"), list(ids)
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self._tokenize(prompt["prompt"])
        raise ValueError(f"a prompt must be a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        if lora_request is not None:
            self.add_lora(lora_request)  # read and checked now: an adapter that does not fit is this call's error
        best_of = params.best_of
        assert best_of is not None  # SamplingParams.__post_init__ defaults it to n
        if best_of > params.n and params.output_kind == RequestOutputKind.DELTA:
            raise ValueError("best_of > n cannot stream: the best samples are known only at the end")
        params.verify_token_ids(self.vocab_size)
        most = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > most:
                raise ValueError(
                    f"invalid sampling parameter {name}={getattr(params, name)}: this engine returns at most "
                    f"{most} (--max-logprobs)"
                )
        mm = prompt if isinstance(prompt, MultiModalInputs) else None
        if isinstance(prompt, dict) and "multi_modal_data" in prompt:
            mm = self.process_multimodal(prompt)
        text, ids = (mm.prompt, mm.prompt_token_ids) if mm is not None else self._tokenize(prompt)
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        max_len = self.model_config.max_model_len
        if len(ids) >= max_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, but this model's context (max_model_len) is {max_len} tokens; "
                "shorten the prompt"
            )
        params = params.clone()
        if params.max_tokens is None:
            params.max_tokens = max_len - len(ids)
        elif len(ids) + params.max_tokens > max_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: "
                f"{len(ids) + params.max_tokens} "
                f"tokens exceed this model's context of {max_len}; lower max_tokens to at most {max_len - len(ids)}"
            )
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(ids) + params.max_tokens > capacity:
            raise ValueError(
                f"the request needs up to {len(ids) + params.max_tokens} tokens of KV cache but the cache holds "
                f"{capacity}; lower max_tokens or raise the KV cache size"
            )
        params._eos_token_ids = self.eos_token_ids
        grammar = self._compile_grammar(params)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        group = _Group(request_id, text, ids, params, arrival)
        for i in range(best_of):
            p = params
            if best_of > 1:
                p = params.clone()
                if p.seed is not None:
                    p.seed += i  # distinct but reproducible samples
                if best_of > params.n and p.logprobs is None:
                    p.logprobs = 0  # ranking needs each sample's cumulative logprob
            rid = request_id if best_of == 1 else f"{request_id}#{i}"
            req = Request(rid, ids, p, arrival)
            if mm is not None and mm.items:  # an image's tokens' KV depends on its content
                req.mm_items = tuple(mm.items)
                req.identity_spans = [(it.offset, it.end, it.identity) for it in mm.items]
            if lora_request is not None:
                req.lora_request = lora_request
                req.cache_salt = lora_request  # its KV differs from the base model's and other adapters'
            group.samples.append(_Sample(i, req, IncrementalDetokenizer(self.tokenizer, ids, p)))
        connector = self.kv_connector
        if connector is not None and not connector.config.is_producer and group.samples[0].req.block_identity() is None:
            connector.load(request_id, ids)  # the prefill instance's KV, as prefix-cache blocks
        self.groups[request_id] = group
        for s in group.samples:
            self.sample_of[s.req.request_id] = s
            self.group_of[s.req.request_id] = group
            if grammar is not None:
                self.structured.add(s.req.request_id, grammar, ids)
            self.scheduler.add_request(s.req)

    def _compile_grammar(self, params: SamplingParams):
        """The request's compiled grammar, or None: refused (ValueError) where it does not
        compile or the platform's runner cannot apply grammars."""
        if params.structured_outputs is None:
            return None
        if type(self.runner).launch_with_grammar is StepRunner.launch_with_grammar:
            raise ValueError(
                f"structured outputs are not supported on platform {self.platform.name!r}: its step runner "
                f"({type(self.runner).__name__}) does not apply grammar bitmasks"
            )
        return self.structured.compile(params.structured_outputs)

    # ---- LoRA adapters (vLLM's names) ------------------------------------------------------------
    def _lora(self) -> LoRAManager:
        manager = getattr(self.runner, "lora_manager", None)
        if manager is None:
            raise LoRAError("LoRA adapters are not enabled: start the engine with enable_lora=True (--enable-lora)")
        return manager

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Read and check an adapter into the host cache (LoRAError, a ValueError, where it does not fit)."""
        self._lora().add(lora_request)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        """Drop an adapter from the host cache and its device slot; False if it was not loaded."""
        return self._lora().remove(lora_int_id)

    def list_loras(self) -> set[int]:
        """The ids of the adapters in the host cache."""
        return {r.lora_int_id for r in self._lora().loaded()}

    def abort_request(self, request_ids) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            group = self.groups.pop(rid, None)
            if group is None:
                continue
            self.scheduler.abort([s.req.request_id for s in group.samples])
            self._forget(group)

    def _forget(self, group: _Group) -> None:
        for s in group.samples:
            self.sample_of.pop(s.req.request_id, None)
            self.group_of.pop(s.req.request_id, None)
            self.structured.remove(s.req.request_id)
            self.runner.forget(s.req.request_id)
            if self.speculator is not None:
                self.speculator.forget(s.req.request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    def get_num_unfinished_requests(self) -> int:
        return len(self.groups)

    # ---- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule and run one step; return the outputs of the step before it.

        Turning sampled tokens into outputs (detokenizing, stop strings, RequestOutputs)
        runs while the device computes the next step, so it costs an accelerator no idle
        time. Token-level stops (EOS, stop token ids, max_tokens) still apply at once, so
        no finished request is scheduled again; a stop string ends its request one step
        late, and the token computed for it in that step is dropped.

        With async scheduling the next step is also scheduled and launched before the host
        waits for this one (see `_step_async`). Speculative decoding steps synchronously: a
        request's proposals need its last token on the host.
        """
        overlap = self.config.scheduler.async_scheduling and self.speculator is None
        if self._pipeline_depth > 1:  # pipeline stages: a step per stage in flight
            outputs = self._step_pipelined()
        else:
            outputs = self._step_async() if overlap else self._step_sync()
        if self._failed_outputs:
            outputs += self._failed_outputs
            self._failed_outputs = []
        return outputs

    def _step_sync(self) -> list[RequestOutput]:
        sched_out = self._schedule()
        previous, self._unprocessed = self._unprocessed, None
        outputs: list[RequestOutput] = []

        def process_previous() -> None:
            if previous is not None:
                outputs.extend(self._process_tokens(*previous))

        if sched_out.is_empty:
            process_previous()
            return outputs
        pending = self._min_tokens_pending(sched_out)
        if self.structured.constrains(sched_out):
            launched = self.runner.launch_with_grammar(sched_out, pending, self.structured.bitmask)
            step_out = self.runner.collect(launched, before_sync=process_previous)
        else:
            step_out = self.runner.execute(sched_out, pending, before_sync=process_previous)
        tokens = self._apply(sched_out, step_out)
        if tokens:
            self._unprocessed = (tokens, time.monotonic())
        return outputs

    def _step_async(self) -> list[RequestOutput]:
        """Async scheduling: schedule and launch step N+1, then wait for step N's tokens and
        turn them into outputs while the device computes N+1. The host's work between two
        steps (bookkeeping, scheduling, building inputs) then overlaps the device's.

        A request in step N is scheduled in N+1 on the token N is sampling: the runner takes
        that token from N's output on the device. If N's token stops the request (EOS, a
        stop token or string), the token computed for it in N+1 is dropped; max_tokens and
        the context limit are known ahead, so those requests are not scheduled again.
        Penalties need every token on the host before sampling: a step in which a request
        has them is waited for before the next is scheduled. Grammars need them before the
        sampling of N+1 only: N+1's forward is queued first, and N is waited for (and its
        tokens fed to the grammars) while the device runs it (`_launch_with_grammar`).
        """
        inflight, self._inflight = self._inflight, None
        outputs: list[RequestOutput] = []
        if inflight is not None and any(s.sample and s.sampling_params.penalized for s in inflight[0].scheduled):
            outputs += self._finish(inflight)
            inflight = None
        sched_out = self._schedule()
        if not sched_out.is_empty:
            pending = self._min_tokens_pending(sched_out)
            if self.structured.constrains(sched_out):
                step, inflight = self._launch_with_grammar(sched_out, pending, inflight, outputs)
            else:
                step = self.runner.launch(sched_out, pending)
            self._inflight = (sched_out, step)
        if inflight is not None:
            outputs += self._finish(inflight)
        return outputs

    def _step_pipelined(self) -> list[RequestOutput]:
        """Pipeline parallelism: launch steps while fewer than one per stage are in flight, then
        wait for the oldest, so that every stage has a step to compute (octavo.pipeline). Each
        holds other requests: a request waits for the step that samples its token before it is
        scheduled again, and a step takes its share of the requests (`Scheduler.pipeline_depth`);
        the next chunk of a prompt may follow its previous one at once (every stage runs the
        steps in order)."""
        outputs: list[RequestOutput] = []
        sched_out = self._schedule()
        if not sched_out.is_empty:
            pending = self._min_tokens_pending(sched_out)
            if self.structured.constrains(sched_out):  # the masks are made when rank 0's stage samples
                step = self.runner.launch_with_grammar(sched_out, pending, self.structured.bitmask)
            else:
                step = self.runner.launch(sched_out, pending)
            self._pipelined.append((sched_out, step))
        if self._pipelined and (sched_out.is_empty or len(self._pipelined) >= self._pipeline_depth):
            outputs += self._finish(self._pipelined.popleft())
        return outputs

    def _launch_with_grammar(self, sched_out, pending, inflight, outputs: list[RequestOutput]):
        """Launch a step with grammars; the step before it (`inflight`) is finished inside,
        between the forward and the sampling, its outputs added to `outputs`. Returns the
        launched step and what is left in flight (None)."""
        waiting = [inflight]

        def bitmask(request_ids: list[str]):
            if waiting[0] is not None:  # the grammars need its tokens: wait for them now
                outputs.extend(self._finish(waiting[0]))
                waiting[0] = None
            return self.structured.bitmask(request_ids)

        step = self.runner.launch_with_grammar(sched_out, pending, bitmask)
        return step, waiting[0]

    def _schedule(self) -> SchedulerOutput:
        """The scheduler's next step, noted for metrics: its size, and when each request first
        ran (the end of its time in the queue)."""
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        sched_out = self.scheduler.schedule()
        self.step_tokens = sched_out.num_batched_tokens
        now = time.monotonic()
        for s in sched_out.scheduled:
            if s.start_pos < s.num_prompt_tokens:  # a prompt chunk: perhaps its first step
                group = self.group_of.get(s.request_id)
                if group is not None and group.metrics.first_scheduled_time is None:
                    group.metrics.first_scheduled_time = now
        return sched_out

    def _finish(self, launched) -> list[RequestOutput]:
        """Wait for a launched step, apply its tokens and build their outputs."""
        sched_out, step = launched
        step_out = self.runner.collect(step)
        tokens = self._apply(sched_out, step_out)
        return self._process_tokens(tokens, time.monotonic()) if tokens else []

    def _apply(self, sched_out, step_out) -> list[tuple[Request, int, Any]]:
        """A finished step's prompt logprobs and tokens into the requests; (request, new token,
        its logprobs or None) each. Requests whose own work failed in the step end with an error."""
        self._add_prompt_logprobs(step_out)
        # a request that verified proposals may get several tokens: those past its length before
        before = {s.request_id: len(s.all_token_ids) for s in sched_out.scheduled if s.spec_token_ids}
        tokens = []
        for req in self.scheduler.update(sched_out, step_out.sampled, step_out.num_accepted):
            rid = req.request_id
            new = req.token_ids[before.get(rid, req.num_tokens - 1) :]
            # accepted proposals' logprobs, then the drawn token's (zip drops those past a stop)
            lps = [*step_out.accepted_logprobs.get(rid, [None] * (len(new) - 1)), step_out.logprobs.get(rid)]
            tokens += [(req, t, lp) for t, lp in zip(new, lps)]
        if self.speculator is not None:
            self.speculator.observe(sched_out, step_out.num_accepted)
        for rid, error in step_out.failed.items():
            self._fail(rid, error)
        for req, token, _ in tokens:
            if req.request_id in self.structured:
                self._accept_into_grammar(req, token)
        return tokens

    def _accept_into_grammar(self, req: Request, token: int) -> None:
        """Feed a sampled token to its request's grammar: a grammar that is complete ends the
        request (stopped, as on EOS); a token it refuses fails the request."""
        accepted = self.structured.accept(req.request_id, token)
        if accepted is Accepted.TERMINATED and not req.is_finished:
            self.scheduler.finish(req, RequestStatus.FINISHED_STOPPED)
        elif accepted is Accepted.REJECTED and not req.is_finished:
            self._fail(req.request_id, f"sampled token {token} does not fit the request's structured output grammar")

    def _fail(self, request_id: str, error: str) -> None:
        """End the user request that `request_id` (one of its samples) belongs to with an
        error: every sample's blocks are freed, and its last output, finish_reason "error",
        comes out of the next `step()`. The engine and the other requests go on."""
        group = self.group_of.get(request_id)
        if group is None:  # finished, aborted or failed already
            return
        logger.error("request %s failed and was ended alone: %s", group.request_id, error)
        group.error = error
        for s in group.samples:
            self.scheduler.finish(s.req, RequestStatus.FINISHED_ERROR)
        self.groups.pop(group.request_id, None)
        self._forget(group)
        group.metrics.finished_time = time.monotonic()
        self._failed_outputs.append(
            RequestOutput(
                request_id=group.request_id,
                prompt=group.prompt,
                prompt_token_ids=group.prompt_ids,
                outputs=[
                    CompletionOutput(index=i, text="", token_ids=[], finish_reason="error")
                    for i in range(group.params.n)
                ],
                finished=True,
                metrics=group.metrics,
                error=error,
            )
        )

    @staticmethod
    def _min_tokens_pending(sched_out) -> dict[str, bool]:
        """Per sampling request: whether it is still under min_tokens (EOS and stop tokens banned)."""
        pending = {}
        for s in sched_out.scheduled:
            if s.sample:
                n_out = len(s.all_token_ids) + s.num_pending - s.num_prompt_tokens
                pending[s.request_id] = n_out < s.sampling_params.min_tokens
        return pending

    def _add_prompt_logprobs(self, step_out) -> None:
        for rid, (first, entries) in step_out.prompt_logprobs.items():
            group = self.group_of.get(rid)
            # n > 1 samples share one prompt: take the first sample's
            if group is None or group.prompt_logprobs is None or group.samples[0].req.request_id != rid:
                continue
            for j, (chosen, rank, alts) in enumerate(entries):
                if first + j != len(group.prompt_logprobs):
                    continue  # a position already filled before a preemption
                entry = {tid: Logprob(v, r + 1) for r, (tid, v) in enumerate(alts)}
                entry[group.prompt_ids[first + j]] = Logprob(chosen, rank)
                group.prompt_logprobs.append(entry)

    def _process_tokens(self, tokens: list[tuple[Request, int, Any]], now: float) -> list[RequestOutput]:
        """Detokenize one step's new tokens, apply stop strings, build the outputs."""
        touched: dict[str, _Group] = {}
        for req, token, lp in tokens:
            sample = self.sample_of.get(req.request_id)
            if sample is None:  # aborted since
                continue
            group = self.group_of[req.request_id]
            self.generation_tokens_total += 1
            metrics = group.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
                self.prompt_tokens_total += len(group.prompt_ids)
            elif metrics.last_token_time is not None and now != metrics.last_token_time:
                metrics.inter_token_latencies.append(now - metrics.last_token_time)
            metrics.last_token_time = now
            try:
                self._add_token(sample, req, token, lp)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                logger.exception("detokenizing request %s failed", group.request_id)
                self._fail(req.request_id, f"{type(e).__name__}: {e}")
                continue
            touched[group.request_id] = group
        outputs = []
        for group in touched.values():
            if group.error is not None:
                continue
            try:
                out = self._make_output(group)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                logger.exception("building the output of request %s failed", group.request_id)
                self._fail(group.samples[0].req.request_id, f"{type(e).__name__}: {e}")
                continue
            if group.finished:
                self._save_kv(group)
                group.metrics.finished_time = now
                group.metrics.num_preemptions = sum(s.req.num_preemptions for s in group.samples)
                self.groups.pop(group.request_id, None)
                self._forget(group)
            if out is not None:
                outputs.append(out)
        return outputs

    def _save_kv(self, group: _Group) -> None:
        """A prefill instance keeps a finished prompt's KV for its decode instance."""
        connector = self.kv_connector
        if connector is None or not connector.config.is_producer or group.samples[0].req.block_identity() is not None:
            return
        try:
            connector.save(group.prompt_ids)
        except Exception:  # the decode instance recomputes what it does not receive
            logger.exception("keeping the KV of request %s for the decode instance failed", group.request_id)

    def _add_token(self, sample: _Sample, req: Request, token: int, lp) -> None:
        """One sample's new token: its logprobs, its text, a stop string it completes."""
        if lp is not None and sample.logprobs is not None:
            chosen, rank, alts = lp
            entry = {tid: Logprob(v, r + 1, None) for r, (tid, v) in enumerate(alts)}
            entry[token] = Logprob(chosen, rank, None)
            sample.logprobs.append(entry)
            sample.cumulative_logprob += chosen
        stop = sample.detok.add_token(token)
        if stop is not None and not req.is_finished:
            # a step already queued may compute one more token for it: the scheduler
            # no longer knows the request, so its update drops that token
            self.scheduler.finish(req, RequestStatus.FINISHED_STOPPED, stop)
        elif req.is_finished:
            sample.detok.flush()

    def _make_output(self, group: _Group) -> RequestOutput | None:
        kind = group.params.output_kind
        finished = group.finished
        params = group.params
        ranked = len(group.samples) > params.n  # best_of > n
        if (kind == RequestOutputKind.FINAL_ONLY or ranked) and not finished:
            return None
        samples = group.samples
        if ranked:  # best_of: the n samples with the highest cumulative logprob
            samples = sorted(samples, key=_cumulative_logprob, reverse=True)[: params.n]
        delta = kind == RequestOutputKind.DELTA
        comps = []
        for index, s in enumerate(samples):
            req = s.req
            done = req.is_finished
            tokens = req.output_token_ids
            if delta:
                text = s.detok.delta(done)
                new_tokens = tokens[s.sent_tokens :]
                lps = s.logprobs[s.sent_tokens :] if s.logprobs is not None else None
                s.sent_tokens = len(tokens)
            else:
                text = s.detok.visible_text(done)
                new_tokens = list(tokens)
                lps = list(s.logprobs) if s.logprobs is not None else None
            if ranked and params.logprobs is None:
                lps = None  # asked for internally, not by the user
            comps.append(
                CompletionOutput(
                    index=index,
                    text=text,
                    token_ids=new_tokens,
                    cumulative_logprob=s.cumulative_logprob,
                    logprobs=lps,
                    finish_reason=req.finish_reason,
                    stop_reason=req.stop_reason,
                )
            )
        cached = max((s.req.num_cached_tokens for s in group.samples), default=0)
        return RequestOutput(
            request_id=group.request_id,
            prompt=group.prompt,
            prompt_token_ids=group.prompt_ids,
            outputs=comps,
            finished=finished,
            num_cached_tokens=max(cached, 0),
            metrics=group.metrics,
            prompt_logprobs=group.prompt_logprobs,
        )

    # ---- introspection ----------------------------------------------------------------------
    def get_kv_cache_utilization(self) -> float:
        """Fraction of allocated KV slots that hold (or are about to hold) real tokens.

        A block shared by several requests counts once, filled as far as its fullest
        owner; 1.0 when nothing is allocated. The unused rest is paging's internal
        fragmentation: the empty tail of each request's last block.
        """
        bs = self.block_manager.block_size
        filled: dict[int, int] = {}
        for req in self.scheduler.running:
            for i, b in enumerate(req.block_ids):
                n = min(bs, req.num_tokens - i * bs)
                if n > filled.get(b, 0):
                    filled[b] = n
        allocated = len(filled) * bs
        return sum(filled.values()) / allocated if allocated else 1.0

    def get_stats(self, with_utilization: bool = False) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage(),
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions_total=self.scheduler.num_preemptions,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            kv_slot_utilization=self.get_kv_cache_utilization() if with_utilization else None,
            num_recompiles=self.runner.stats().num_recompiles,
            step_tokens=self.step_tokens,
            spec_decode=self.speculator.stats.copy() if self.speculator is not None else None,
            kv_transfer=self.kv_connector.stats.copy() if self.kv_connector is not None else None,
        )
