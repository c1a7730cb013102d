"""Core's eager step runner: SchedulerOutput -> flat device tensors -> model -> sampler -> StepOutput.

The default `StepRunner` (octavo.platform.runner): it builds core's model on the platform's
parts (attention back end, linear method, fused ops, communicator), runs it op by op, and
samples with the platform's draw. Platforms subclass it where they run something their own
way: graphs of decode steps (`make_graph_runner`), start-up warm-up shapes (`warm_up_batches`),
a whole forward of their own (`forward`).

Tensor and pipeline parallelism across processes live here too: rank 0 (the engine's process)
starts the other ranks (octavo.executor), each of which builds this same runner class and runs
the forward on the inputs rank 0 hands it. With `Platform.spmd` the runner gets all ranks in
one process instead, and nothing is started. With pipeline stages (octavo.pipeline) rank 0
holds the last stage: `launch` only hands the step to the workers, and `collect` waits for the
previous stage's activations, runs its layers and samples, so that up to pipeline_parallel_size
steps of different requests are in flight, each on its own stage.

With `SchedulingPolicy.static_shapes` every step is padded to a bucket (`_prepare`):
padding tokens carry slot -1 and position 0, padding requests q_len 0 and seq_len 0, the
block tables are as wide as their bucket, and the rows to sample are padded with row 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from octavo.config import EngineConfig
from octavo.graph_runner import GraphRunner
from octavo.layers.linear import Linear
from octavo.loader.source import ModelSource
from octavo.loader.weights import init_dummy, iter_weights
from octavo.lora.manager import LoRAManager
from octavo.models import get_model_class
from octavo.multimodal.encoder_cache import EncoderCache
from octavo.pipeline import recv_activations, send_activations, zero_activations
from octavo.platform import ForwardBatch, Platform, StepOutput, StepRunner
from octavo.platform.runner import TokenLogprobs
from octavo.quantization.apply import quantize_linears
from octavo.request import RequestFailure
from octavo.sampling import RowByRowJob, SampleJob, Sampler
from octavo.scheduler import PENDING_TOKEN, SchedulerOutput
from octavo.spec_decode.verifier import Verified, rows_of, verify
from octavo.transfer import tensor_to_device, to_device

logger = logging.getLogger("octavo")


@dataclass
class LaunchedStep:
    """A step whose device work is queued: `ModelRunner.collect` turns it into a StepOutput."""

    job: SampleJob | RowByRowJob | None
    request_ids: list[str]
    prompt_logprobs: dict
    failed: dict[str, str] = field(default_factory=dict)
    # speculative decoding: the requests whose proposed tokens were verified in this step
    verified: dict[str, Verified] = field(default_factory=dict)
    # rank 0 of a pipeline: the step's own stage, run by `collect` (it returns the launched step)
    deferred: Callable[[], LaunchedStep] | None = None


def _upload(parts: list[list[int]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Several int lists in one host-to-device copy, returned as views. Each part starts on a
    64-byte boundary: JIT compilers specialize kernels on pointer alignment, and would compile
    them again for every new misalignment."""
    per_line = 64 // torch.empty((), dtype=dtype).element_size()
    flat: list[int] = []
    starts = []
    for part in parts:
        starts.append(len(flat))
        flat += part
        flat += [0] * (-len(flat) % per_line)
    buf = to_device(flat, dtype, device)
    return [buf[s : s + len(p)] for s, p in zip(starts, parts)]


class ModelRunner(StepRunner):
    #: run `warm_up_batches()` after the KV cache is allocated
    warm_up_at_start = False

    def __init__(self, config: EngineConfig, platform: Platform, source: ModelSource) -> None:
        super().__init__(config, platform, source)
        from octavo.executor import start_workers  # imports this module: not at the top

        # tensor and pipeline parallelism: ranks 1.. start and load their shards (their stages)
        # while this process loads rank 0's
        self.workers = start_workers(config, platform, source) if self._is_driver() else None
        self.stage = platform.communicator.stage  # known once this process joined the run
        try:
            self._load_model(config, platform, source)
        except BaseException as e:
            self._worker_failure(e)
            self.shutdown()
            raise
        self.sampler = Sampler(self.device, platform.ops.sample, platform.ops.apply_token_bitmask)
        # LoRA adapters: their weights in device slots of the targeted layers (octavo.lora)
        lora = config.lora
        self.lora_manager = LoRAManager(lora, self.model, platform.ops, self.device, self.dtype) if lora else None
        # the last launched step's sampled tokens (device) and each request's row in them:
        # a step scheduled before they reached the host takes its inputs from here
        self._last_tokens: tuple[torch.Tensor | None, dict[str, int]] = (None, {})
        self.kv_caches: list[Any] = []
        self.block_size = config.cache.block_size
        self.static = platform.scheduling.static_shapes
        self.graph_runner: GraphRunner | None = None
        # pipeline stages: launched steps not collected yet (their activations are still between stages)
        self._uncollected = 0
        # speculative decoding's EAGLE heads read each step's hidden states (octavo.spec_decode.eagle)
        self.hidden_tap: Callable[[SchedulerOutput, torch.Tensor, list[int]], None] | None = None

    def _is_driver(self) -> bool:
        return self.config.parallel.rank == 0 and not self.platform.spmd

    def _load_model(self, config: EngineConfig, platform: Platform, source: ModelSource) -> None:
        self.device = platform.device.torch_device()
        self.dtype = config.model.dtype
        hf = config.model.hf_config
        t0 = time.perf_counter()
        cls = get_model_class(hf)
        with torch.device(self.device):
            # only models with experts take the switch (engine_config refuses it for the others)
            ep = {"enable_expert_parallel": True} if config.parallel.enable_expert_parallel else {}
            model = cls(platform, hf, config.model.max_model_len, **ep)
        model.to(dtype=self.dtype)
        model.cos_sin_cache = model.cos_sin_cache.float()  # rotary tables stay in float32
        quant = config.model.quantization
        # quantized layers get their scheme's method (and its tensors) after the cast to dtype,
        # which must not touch their packed or fp8 tensors
        kept = quantize_linears(model, quant, platform.linear) if quant is not None else {}
        if config.model.load_format == "dummy":
            init_dummy(model, config.model.seed)
        else:
            model.load_weights(iter_weights(source, hf, self.dtype, quant, kept))
        # the linear method owns its weights' layout: it may repack them now that all are in
        for module in model.modules():
            if isinstance(module, Linear):
                module.method.process_weights_after_loading(module)
        self.model = model.eval()
        # vision-language models: their encoder's outputs per request (octavo.multimodal)
        self.encoder_cache = EncoderCache(model) if hasattr(model, "encode_images") else None
        self.specs = model.attention_specs()
        self.model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info(
            "loaded %s (%.1f MB, %s) in %.2f s",
            config.model.model,
            self.model_bytes / 1e6,
            str(self.dtype).replace("torch.", ""),
            time.perf_counter() - t0,
        )

    # ---- KV cache ---------------------------------------------------------------------
    def _kv_specs(self):
        attention, bs = self.platform.attention, self.config.cache.block_size
        return [attention.kv_cache_spec(spec, self.dtype, bs) for spec in self.specs]

    def kv_cache_bytes_per_block(self) -> int:
        """This rank's price of a block, or with workers the most any rank pays (every rank
        allocates as many blocks: a pipeline stage may hold more layers than this one)."""
        own = sum(s.page_bytes for s in self._kv_specs())
        return own if self.workers is None else max(own, self.workers.kv_cache_bytes_per_block())

    def kv_cache_budget_bytes(self) -> int:
        return self.platform.device.kv_cache_budget_bytes(self.config, self.profile_run)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        if self.workers is not None:  # every rank allocates alike; warm-up forwards run collectives
            self.workers.allocate_kv_cache(num_blocks, self._allocate)
        else:
            # LoRA: the start-up forwards and the captured graphs run the adapters' kernels
            sc, lora = self.config.scheduler, self.lora_manager
            max_tokens = max(sc.max_num_seqs, sc.max_num_batched_tokens)
            with lora.graph_capture(max_tokens) if lora is not None else contextlib.nullcontext():
                self._allocate(num_blocks)

    def _allocate(self, num_blocks: int) -> None:
        attention = self.platform.attention
        self.kv_caches = [attention.allocate(spec, kv, num_blocks) for spec, kv in zip(self.specs, self._kv_specs())]
        with torch.inference_mode():
            if self.static is not None:
                self._compile_static_shapes()
            elif self.warm_up_at_start:
                for q_lens, seq_lens in self.warm_up_batches():
                    self.forward(self._dummy_batch(q_lens, seq_lens))
            self.platform.device.synchronize()
            # a stage's steps take the previous stage's activations, which no captured graph reads
            eager = self.config.enforce_eager or self.stage.size > 1
            self.graph_runner = None if eager else self.make_graph_runner()

    def warm_up_batches(self) -> list[tuple[list[int], list[int]]]:
        """(q_lens, seq_lens) of the dummy batches run at start-up when `warm_up_at_start`:
        the shapes whose kernels compile on first use. Default: none."""
        return []

    def make_graph_runner(self) -> GraphRunner | None:
        """Captured decode graphs over the allocated cache, or None (the default) to run every
        step eagerly. Called after warm-up, unless enforce_eager."""
        return None

    def _compile_static_shapes(self) -> None:
        """Run every shape of the static-shape buckets once, so a compiling forward compiles
        them all now. Each is a real padded step: one request of the bucket's tokens plus
        padding, over block 0 (slot -1: nothing is stored). Buckets past the largest step
        the config allows (token budget, max_num_seqs, max_model_len's blocks) are skipped."""
        t0 = time.perf_counter()
        sc = self.config.scheduler
        widest = -(-self.config.model.max_model_len // self.block_size)
        assert self.static is not None  # called only for a platform with static shapes
        shapes = self.static.shapes((sc.max_num_batched_tokens, sc.max_num_seqs, widest))
        for tokens, reqs, width in shapes:
            q = min(tokens, width * self.block_size, self.config.model.max_model_len)
            self.forward(self._dummy_batch([q], [q], pad_to=(tokens, reqs, width)))
        logger.info("ran %d static shapes at start-up in %.2f s", len(shapes), time.perf_counter() - t0)

    def _dummy_batch(
        self, q_lens: list[int], seq_lens: list[int], pad_to: tuple[int, int, int] | None = None
    ) -> ForwardBatch:
        """A batch that stores nothing (slot -1) and reads only block 0 (every page), for the
        profiling and warm-up forwards."""
        qsl = [0]
        for n in q_lens:
            qsl.append(qsl[-1] + n)
        width = max(-(-s // self.block_size) for s in seq_lens)
        t = qsl[-1]
        positions = [p for n, s in zip(q_lens, seq_lens) for p in range(s - n, s)]
        tokens, reqs, width = pad_to or (t, len(seq_lens), width)
        return self._batch(
            [0] * tokens,
            positions + [0] * (tokens - t),
            [-1] * tokens,
            qsl + [t] * (reqs - len(seq_lens)),
            list(seq_lens) + [0] * (reqs - len(seq_lens)),
            [0] * (reqs * width),
            width,
            [],
            t,
            len(seq_lens),
        )[0]

    # ---- memory profiling ---------------------------------------------------------------
    @torch.inference_mode()
    def profile_run(self) -> None:
        """One dummy forward of max_num_batched_tokens prompt tokens (split into sequences of
        at most max_model_len) and the sampler at max_num_seqs rows: the activation peak the
        KV cache must leave room for. KV writes are skipped (slot -1) and every page points
        at the one block of a temporary cache, so the run needs no real cache."""
        sc = self.config.scheduler
        max_len = self.config.model.max_model_len
        total = sc.max_num_batched_tokens
        lens = []
        while total > 0:
            lens.append(min(max_len, total))
            total -= lens[-1]
        attention = self.platform.attention
        caches = [attention.allocate(spec, kv, 1) for spec, kv in zip(self.specs, self._kv_specs())]
        batch = self._dummy_batch(lens, lens)
        meta = attention.build_metadata(batch)
        stand_in = self._stand_in(batch)  # a stage past the first: zeros for the earlier stages' activations
        args = (batch.input_ids, batch.positions, caches, meta)
        hidden = self.model(*args) if stand_in is None else self.model(*args, stand_in)
        # a pooling model (octavo.pooling), or a pipeline stage before the last: no logits, no sampler
        if getattr(self.model, "lm_head", None) is None:
            return
        rows = min(sc.max_num_seqs, batch.input_ids.shape[0])
        logits = self.model.compute_logits(hidden[:rows])
        from octavo.sampling_params import SamplingParams

        params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50)] * rows
        self.sampler.launch(logits, [f"profile-{i}" for i in range(rows)], params, [([0], 1)] * rows).result()
        del hidden, logits, caches

    # ---- one step -----------------------------------------------------------------------
    def _prepare(self, out: SchedulerOutput, rows: list[int]) -> tuple[ForwardBatch, torch.Tensor]:
        """The step's ForwardBatch, plus `last`: the row of each sampled request's last token.
        Everything travels in two uploads (one int64, one int32 buffer): each upload costs
        the host tens of microseconds, and the device waits for all of them. A token the
        previous step is still sampling (PENDING_TOKEN) is copied from its output on the
        device."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        width = 0
        feed_dst: list[int] = []  # rows of input_ids to take from the last step's tokens
        feed_src: list[int] = []
        for s in out.scheduled:
            n = len(s.token_ids)
            try:  # one request's inputs: if they cannot be built, it fails alone (RequestFailure)
                start = s.start_pos
                blocks = s.block_ids
                req_slots = [blocks[p // bs] * bs + p % bs for p in range(start, start + n)]
                feed = None
                if s.token_ids[-1] == PENDING_TOKEN:
                    feed = self._last_tokens[1].get(s.request_id)
                    if feed is None or PENDING_TOKEN in s.token_ids[:-1]:
                        raise RuntimeError("it was scheduled on a token that the last launched step did not sample")
            except Exception as e:
                raise RequestFailure(s.request_id, e) from e
            input_ids.extend(s.token_ids)
            if feed is not None:
                feed_dst.append(len(input_ids) - 1)
                feed_src.append(feed)
            positions.extend(range(start, start + n))
            slots.extend(req_slots)
            qsl.append(qsl[-1] + n)
            seq_lens.append(start + n)
            width = max(width, len(blocks))
        num_tokens, num_reqs = len(input_ids), len(seq_lens)
        last = [qsl[i + 1] - 1 for i in rows]
        if self.static is not None:  # pad to the buckets: see the module doc
            tokens, reqs, width = self.static.pad(num_tokens, num_reqs, width)
            input_ids += [0] * (tokens - num_tokens)
            positions += [0] * (tokens - num_tokens)
            slots += [-1] * (tokens - num_tokens)
            qsl += [num_tokens] * (reqs - num_reqs)
            seq_lens += [0] * (reqs - num_reqs)
            last += [0] * (reqs - len(last))
        tables: list[int] = []
        for s in out.scheduled:
            tables += s.block_ids
            tables += [0] * (width - len(s.block_ids))
        tables += [0] * (width * (len(seq_lens) - num_reqs))
        batch, last_t, dst, src = self._batch(
            input_ids, positions, slots, qsl, seq_lens, tables, width, [last, feed_dst, feed_src], num_tokens, num_reqs
        )
        if feed_dst:
            last_tokens = self._last_tokens[0]
            assert last_tokens is not None  # feed_dst's rows were found in its request map
            batch.input_ids.index_copy_(0, dst, last_tokens.index_select(0, src))
        return batch, last_t

    def _batch(
        self, input_ids, positions, slots, qsl, seq_lens, tables, width, extra, num_tokens, num_reqs
    ) -> tuple[Any, ...]:
        """Upload a step's lists (and `extra` int64 lists, returned as tensors after the batch)."""
        ids, pos, slot_mapping, *extra_t = _upload([input_ids, positions, slots, *extra], torch.int64, self.device)
        qsl_t, seq_lens_t, tables_t, counts = _upload(
            [qsl, seq_lens, tables, [num_tokens, num_reqs]], torch.int32, self.device
        )
        real_qsl = qsl[: num_reqs + 1]
        batch = ForwardBatch(
            input_ids=ids,
            positions=pos,
            slot_mapping=slot_mapping,
            query_start_loc=qsl_t,
            seq_lens=seq_lens_t,
            block_tables=tables_t.view(len(seq_lens), width),
            max_query_len=max((real_qsl[i + 1] - real_qsl[i] for i in range(num_reqs)), default=0),
            max_seq_len=max(seq_lens, default=0),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            num_tokens_t=counts[0],
            num_reqs_t=counts[1],
        )
        return (batch, *extra_t)

    def _prompt_logprobs(self, out: SchedulerOutput, hidden: torch.Tensor, qsl: list[int], failed: dict[str, str]):
        """For requests that asked for prompt_logprobs: the logprob of each prompt token
        given the tokens before it (and the top-k alternatives), for this chunk's rows.
        A request whose computation raises goes into `failed`."""
        result: dict[str, tuple[int, list[tuple[float, int, list[tuple[int, float]]]]]] = {}
        for i, s in enumerate(out.scheduled):
            k = s.sampling_params.prompt_logprobs
            if k is None or s.start_pos >= s.num_prompt_tokens:
                continue
            # row j predicts the token at position start_pos + j + 1, while that is a prompt token
            n = min(len(s.token_ids), s.num_prompt_tokens - 1 - s.start_pos)
            if n <= 0:
                continue
            try:
                if self.lora_manager is not None:  # an lm_head adapter follows the rows taken
                    self.lora_manager.logit_rows(slice(qsl[i], qsl[i] + n))
                result[s.request_id] = self._prompt_logprobs_of(s, hidden[qsl[i] : qsl[i] + n], k)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                logger.exception("prompt logprobs failed for request %s", s.request_id)
                failed[s.request_id] = f"{type(e).__name__}: {e}"
        return result

    def _prompt_logprobs_of(self, s, hidden: torch.Tensor, k: int):
        n = hidden.shape[0]
        logp = self.model.compute_logits(hidden).log_softmax(dim=-1)
        targets = to_device(s.all_token_ids[s.start_pos + 1 : s.start_pos + 1 + n], torch.long, self.device)
        chosen = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        ranks = (logp > chosen.unsqueeze(1)).sum(dim=1) + 1
        top_v, top_i = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        rows = zip(chosen.tolist(), ranks.tolist(), top_i.tolist(), top_v.tolist())
        return s.start_pos + 1, [(c, r, list(zip(ti, tv))) for c, r, ti, tv in rows]

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states of one flat batch (every tensor-parallel rank runs it; call it in
        inference mode). A decode step replays a captured graph where there is one. On a
        pipeline stage it serves the forwards a rank runs alone (warm-up shapes): steps run
        through `run_stage`."""
        if self.stage.size > 1:
            return self._forward_stage(batch, self._stand_in(batch))
        graphs = self.graph_runner
        if graphs is not None and self.lora_manager is not None and not self.lora_manager.stage_graph():
            graphs = None  # the graphs hold no LoRA kernels: a step with adapters runs eagerly
        hidden = graphs.run(batch) if graphs is not None else None
        if hidden is None:  # prefill or mixed step, a batch past the captured sizes, or eager
            meta = self.platform.attention.build_metadata(batch)
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, meta)
        return hidden

    def _forward_multimodal(self, batch: ForwardBatch, extra: dict) -> torch.Tensor:
        """A step of a vision-language model with images in it: the model takes their input
        embeddings (and M-RoPE positions) beside the batch, eagerly."""
        meta = self.platform.attention.build_metadata(batch)
        return self.model(batch.input_ids, batch.positions, self.kv_caches, meta, **extra)

    # ---- pipeline stages ----------------------------------------------------------------------
    def _forward_stage(self, batch: ForwardBatch, intermediate) -> Any:
        meta = self.platform.attention.build_metadata(batch)
        return self.model(batch.input_ids, batch.positions, self.kv_caches, meta, intermediate)

    def _stand_in(self, batch: ForwardBatch):
        """Zeros in place of the previous stage's activations, for the forwards a stage runs
        alone (profiling, warm-up); None on the first stage (or without stages)."""
        if self.stage.is_first:
            return None
        hidden = self.config.model.hf_config.hidden_size
        return zero_activations(batch.input_ids.shape[0], hidden, self.dtype, self.device)

    def run_stage(self, batch: ForwardBatch) -> Any:
        """One step of this rank's pipeline stage: the previous stage's activations in (unless
        first), its layers, the activations out to the next stage (unless last). Returns the
        hidden states on the last stage. Call it in inference mode."""
        comm = self.platform.communicator
        intermediate = None
        if not self.stage.is_first:
            hidden = self.config.model.hf_config.hidden_size
            intermediate = recv_activations(comm, batch.input_ids.shape[0], hidden, self.dtype, self.device)
        out = self._forward_stage(batch, intermediate)
        if not self.stage.is_last:
            send_activations(comm, *out)
        return out

    @torch.inference_mode()
    def launch(
        self, scheduler_output: SchedulerOutput, min_tokens_pending: dict[str, bool] | None = None
    ) -> LaunchedStep:
        """Queue one step's work on the device (forward, logits, sampling) without waiting
        for it (prompt logprobs, when asked for, do wait)."""
        try:
            return self._launch(scheduler_output, min_tokens_pending or {})
        except BaseException as e:
            self._worker_failure(e)
            raise

    @torch.inference_mode()
    def launch_with_grammar(
        self,
        scheduler_output: SchedulerOutput,
        min_tokens_pending: dict[str, bool],
        grammar_bitmask: Callable[[list[str]], torch.Tensor | None],
    ) -> LaunchedStep:
        """`launch`, with the grammars' bitmask asked for once the forward is queued (see
        StepRunner.launch_with_grammar)."""
        try:
            return self._launch(scheduler_output, min_tokens_pending, grammar_bitmask)
        except BaseException as e:
            self._worker_failure(e)
            raise

    def _launch(
        self,
        out: SchedulerOutput,
        pending: dict[str, bool],
        grammar_bitmask: Callable[[list[str]], torch.Tensor | None] | None = None,
    ) -> LaunchedStep:
        """Build the step's inputs and hand them to the workers; then queue the forward and the
        sampling here (`_run`), or, on a pipeline's rank 0, leave that to `collect`: the
        earlier stages compute meanwhile, and further steps can be launched behind this one."""
        failed: dict[str, str] = {}
        while True:  # a request whose inputs cannot be built fails; the step runs without it
            # rows with proposed tokens are verified apart (octavo.spec_decode), synchronously
            rows = [i for i, s in enumerate(out.scheduled) if s.sample and not s.spec_token_ids]
            try:
                # `last` is uploaded with the inputs: an upload queued behind the forward would wait for it
                batch, last = self._prepare(out, rows)
                break
            except RequestFailure as f:
                logger.error("request %s failed while its step was prepared: %s", f.request_id, f)
                failed[f.request_id] = str(f)
                out = dataclasses.replace(out, scheduled=[s for s in out.scheduled if s.request_id != f.request_id])
                if out.is_empty:
                    self._last_tokens = (None, {})
                    return LaunchedStep(None, [], {}, failed)
        if self.lora_manager is not None:  # each token's adapter slot, read by the LoRA layers
            self.lora_manager.prepare([(s.lora_request, len(s.token_ids)) for s in out.scheduled], len(batch.input_ids))
        if self.workers is not None:
            self.workers.send_step(batch)
        if self.stage.size == 1:
            extra = None
            if self.encoder_cache is not None:  # a vision-language model (octavo.multimodal.encoder_cache)
                batch, extra = self.encoder_cache.step_inputs(out, batch)
            hidden = self.forward(batch) if extra is None else self._forward_multimodal(batch, extra)
            return self._launch_forward(out, batch, last, rows, failed, pending, grammar_bitmask, hidden)
        # a step scheduled on a token still being sampled would need it on the first stage
        assert all(s.token_ids[-1] != PENDING_TOKEN for s in out.scheduled), "a pipeline step fed a pending token"
        self._last_tokens = (None, {})

        def run() -> LaunchedStep:
            self._uncollected -= 1
            return self._launch_forward(out, batch, last, rows, failed, pending, grammar_bitmask, self.run_stage(batch))

        self._uncollected += 1
        return LaunchedStep(None, [], {}, failed, deferred=run)

    def _launch_forward(self, out, batch, last, rows, failed, pending, grammar_bitmask, hidden) -> LaunchedStep:
        """The rest of a step once its hidden states are queued: prompt logprobs, logits, sampling."""
        if self.hidden_tap is not None:
            self.hidden_tap(out, hidden, batch.query_start_loc_cpu)
        prompt_lps = {}
        if any(s.sampling_params.prompt_logprobs is not None for s in out.scheduled):
            prompt_lps = self._prompt_logprobs(out, hidden, batch.query_start_loc_cpu, failed)
        verified = self._verify(out, hidden, batch.query_start_loc_cpu, failed)
        if not rows:
            self._last_tokens = (None, {})
            return LaunchedStep(None, [], prompt_lps, failed, verified)
        if self.lora_manager is not None:
            self.lora_manager.logit_rows(last)
        logits = self.model.compute_logits(hidden.index_select(0, last))[: len(rows)]
        chosen = [out.scheduled[i] for i in rows]
        rids = [s.request_id for s in chosen]
        # the host fills the grammars' masks while the device runs the forward queued above
        bitmask = grammar_bitmask(rids) if grammar_bitmask is not None else None
        if bitmask is not None:
            bitmask = tensor_to_device(bitmask, self.device)
        job = self.sampler.launch(
            logits,
            rids,
            [s.sampling_params for s in chosen],
            [(s.all_token_ids, s.num_prompt_tokens) for s in chosen],
            [pending.get(r, False) for r in rids],
            copy_to_host=self.platform.device.copy_to_host,
            bitmask=bitmask,
        )
        self._last_tokens = (job.token_ids, {r: i for i, r in enumerate(rids)})
        return LaunchedStep(job, rids, prompt_lps, failed, verified)

    def _verify(self, out: SchedulerOutput, hidden: torch.Tensor, qsl: list[int], failed: dict[str, str]):
        """Speculative decoding: verify the proposed tokens of the requests that carry some
        against the logits at their positions (octavo.spec_decode.verifier). Waits for the
        device. If verification raises, those requests fail; the others go on."""
        spec = [s for s in out.scheduled if s.spec_token_ids]
        if not spec:
            return {}
        try:
            rows = to_device(rows_of(out.scheduled, qsl), torch.long, self.device)
            if self.lora_manager is not None:
                self.lora_manager.logit_rows(rows)
            logits = self.model.compute_logits(hidden.index_select(0, rows))
            return verify(self.sampler, logits, spec, [s.spec_probs for s in spec])
        except Exception as e:  # noqa: BLE001 - these requests fail, the others go on
            logger.exception("verifying proposed tokens failed")
            failed.update((s.request_id, f"{type(e).__name__}: {e}") for s in spec)
            return {}

    @torch.inference_mode()
    def last_logits(self, out: SchedulerOutput) -> torch.Tensor:
        """One forward of `out` and the logits at each scheduled request's last position, in
        order, without sampling: a draft model (octavo.spec_decode.draft_model) draws from them
        with the target's processing."""
        rows = list(range(len(out.scheduled)))
        batch, last = self._prepare(out, rows)
        if self.workers is not None:
            self.workers.send_step(batch)
        return self.model.compute_logits(self.forward(batch).index_select(0, last))[: len(rows)]

    def collect(self, launched: LaunchedStep, before_sync: Callable[[], None] | None = None) -> StepOutput:
        """Wait for a launched step's sampled tokens. `before_sync` runs first, while the
        device still computes."""
        step = launched
        if step.deferred is not None:  # rank 0's pipeline stage: its forward and sampling now
            try:
                with torch.inference_mode():
                    step = step.deferred()
            except BaseException as e:
                self._worker_failure(e)
                raise
        if before_sync is not None:
            before_sync()
        sampled: dict[str, int] = {}
        lps: dict = {}
        failed = dict(step.failed)
        if step.job is not None:
            try:
                result = step.job.result()
            except BaseException as e:
                self._worker_failure(e)
                raise
            failed.update((step.request_ids[i], msg) for i, msg in result.failed.items())
            sampled = {r: t for r, t in zip(step.request_ids, result.token_ids) if r not in failed}
            lps = {r: lp for r, lp in zip(step.request_ids, result.logprobs) if lp is not None and r not in failed}
        accepted_lps: dict[str, list[TokenLogprobs]] = {}
        for rid, v in step.verified.items():
            sampled[rid] = v.token
            if v.logprobs[-1] is not None:  # logprobs asked for: every accepted token has them
                lps[rid] = v.logprobs[-1]
                accepted_lps[rid] = [lp for lp in v.logprobs[:-1] if lp is not None]
        num_accepted = {rid: v.num_accepted for rid, v in step.verified.items()}
        return StepOutput(sampled, lps, step.prompt_logprobs, failed, num_accepted, accepted_lps)

    def forget(self, request_id: str) -> None:
        self.sampler.forget(request_id)
        cache = getattr(self, "encoder_cache", None)  # None too where a subclass loads its own model
        if cache is not None:
            cache.forget(request_id)

    def _worker_failure(self, cause: BaseException) -> None:
        """A step (or start-up) raised here: if a tensor-parallel worker caused it, raise its
        WorkerError instead (octavo.executor)."""
        workers = getattr(self, "workers", None)  # None too when __init__ failed before setting it
        if workers is not None:
            workers.step_failed(cause)

    def shutdown(self) -> None:
        """Stop the workers, if any (idempotent; garbage collection and
        interpreter exit do it too). The runner cannot step afterwards."""
        workers = getattr(self, "workers", None)  # None too when __init__ failed before setting it
        if workers is not None:
            # a stage whose step was never collected waits to hand its activations on, and would
            # not read the stop message: stop the workers at once
            workers.shutdown(now=getattr(self, "_uncollected", 0) > 0)
