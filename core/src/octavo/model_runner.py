"""SchedulerOutput -> flat device tensors -> model -> sampler -> StepOutput."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from octavo.config import EngineConfig
from octavo.graph_runner import GraphRunner
from octavo.loader.source import ModelSource
from octavo.loader.weights import init_dummy, iter_weights
from octavo.models import get_model_class
from octavo.platform import AttentionMetadata, Platform
from octavo.request import RequestFailure
from octavo.sampling import RowByRowJob, SampleJob, Sampler
from octavo.scheduler import PENDING_TOKEN, SchedulerOutput
from octavo.transfer import to_device

logger = logging.getLogger("octavo")


@dataclass(frozen=True)
class StepOutput:
    """Runner -> scheduler: one sampled token per request that reached its end this step."""

    sampled: dict[str, int]
    logprobs: dict[str, tuple[float, int, list[tuple[int, float]]]] = field(default_factory=dict)
    # per request: (first prompt position predicted, [(logprob, rank, top-k)] per position)
    prompt_logprobs: dict[str, tuple[int, list[tuple[float, int, list[tuple[int, float]]]]]] = field(
        default_factory=dict
    )
    # requests whose own work raised this step (request id -> error): they fail, the rest go on
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class LaunchedStep:
    """A step whose device work is queued: `ModelRunner.collect` turns it into a StepOutput."""

    job: SampleJob | RowByRowJob | None
    request_ids: list[str]
    prompt_logprobs: dict
    failed: dict[str, str] = field(default_factory=dict)


def _upload(parts: list[list[int]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Several int lists in one host-to-device copy, returned as views. Each part starts on a
    64-byte boundary: kernels compiled for aligned pointers (Triton specializes on 16-byte
    alignment) would otherwise be compiled again for every new misalignment."""
    per_line = 64 // torch.empty((), dtype=dtype).element_size()
    flat: list[int] = []
    starts = []
    for part in parts:
        starts.append(len(flat))
        flat += part
        flat += [0] * (-len(flat) % per_line)
    buf = to_device(flat, dtype, device)
    return [buf[s : s + len(p)] for s, p in zip(starts, parts)]


class ModelRunner:
    def __init__(self, config: EngineConfig, platform: Platform, source: ModelSource) -> None:
        self.config = config
        self.platform = platform
        self.device = platform.torch_device()
        self.dtype = config.model.dtype
        hf = config.model.hf_config
        t0 = time.perf_counter()
        cls = get_model_class(hf)
        with torch.device(self.device):
            model = cls(platform, hf, config.model.max_model_len)
        model.to(dtype=self.dtype)
        model.cos_sin_cache = model.cos_sin_cache.float()  # rotary tables stay in float32
        if config.model.load_format == "dummy":
            init_dummy(model, config.model.seed)
        else:
            model.load_weights(iter_weights(source, hf, self.dtype))
        self.model = model.eval()
        self.model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info(
            "loaded %s (%.1f MB, %s) in %.2f s",
            config.model.model,
            self.model_bytes / 1e6,
            str(self.dtype).replace("torch.", ""),
            time.perf_counter() - t0,
        )
        self.sampler = Sampler(self.device, self.platform.sample)
        # the last launched step's sampled tokens (device) and each request's row in them:
        # a step scheduled before they reached the host takes its inputs from here
        self._last_tokens: tuple[torch.Tensor | None, dict[str, int]] = (None, {})
        self.kv_caches: list[torch.Tensor] = []
        self.block_size = config.cache.block_size
        self.graph_runner: GraphRunner | None = None
        # tensor parallelism: hands each step's inputs to the other ranks (octavo.executor)
        self.send_inputs: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], None] | None = None
        # accelerators measure a forward at the largest token budget before the KV cache is
        # sized (the default platform hook does not run it)
        self.platform.profile_memory(self.profile_run)

    # ---- KV cache ---------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        m = self.model
        per_token = 2 * m.num_kv_heads * m.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return per_token * self.block_size * len(m.layers)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        m = self.model
        shape = self.platform.attention.kv_cache_shape(num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
        self.kv_caches = [self.platform.allocate_kv_cache(shape, self.dtype) for _ in m.layers]
        self.platform.warm_up(self.warmup)
        self.graph_runner = None
        if not self.config.enforce_eager and self.platform.graph_capture_supported():
            self.graph_runner = GraphRunner(
                m,
                self.platform,
                self.kv_caches,
                self.config.scheduler.max_num_seqs,
                self.config.model.max_model_len,
                self.block_size,
                self.device,
            )
            self.graph_runner.capture()

    def _dummy_batch(self, q_lens: list[int], seq_lens: list[int], num_decodes: int):
        """(input_ids, positions, metadata) of a batch that stores nothing (slot -1) and reads
        only block 0 (every page), for the profiling and warm-up forwards."""
        qsl = [0]
        for n in q_lens:
            qsl.append(qsl[-1] + n)
        t, dev = qsl[-1], self.device
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.zeros(
                (len(seq_lens), -(-max(seq_lens) // self.block_size)), dtype=torch.int32, device=dev
            ),
            slot_mapping=torch.full((t,), -1, dtype=torch.int64, device=dev),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=list(seq_lens),
            num_decodes=num_decodes,
        )
        pos = torch.tensor([p for n, s in zip(q_lens, seq_lens) for p in range(s - n, s)], device=dev)
        return torch.zeros(t, dtype=torch.long, device=dev), pos, meta

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
        m = self.model
        shape = self.platform.attention.kv_cache_shape(1, self.block_size, m.num_kv_heads, m.head_dim)
        kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        ids, pos, meta = self._dummy_batch(lens, lens, num_decodes=0)
        t = ids.shape[0]
        hidden = self.model(ids, pos, [kv] * len(m.layers), meta)
        rows = min(sc.max_num_seqs, t)
        logits = self.model.compute_logits(hidden[:rows])
        from octavo.sampling_params import SamplingParams

        params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50)] * rows
        self.sampler(logits, [f"profile-{i}" for i in range(rows)], params, [([0], 1)] * rows)
        del hidden, logits, kv

    @torch.inference_mode()
    def warmup(self) -> None:
        """A few small eager forwards that take the kernels through the batch shapes serving
        meets: one long decode (split over its context), many short decodes, prefill chunks
        of each length class. Platforms that compile kernels on first use (Triton) then
        compile at start-up instead of in the middle of the first requests. Nothing is
        stored (slot -1); every page points at block 0, which holds no one's tokens yet."""
        max_len = self.config.model.max_model_len
        max_seqs = self.config.scheduler.max_num_seqs
        budget = self.config.scheduler.max_num_batched_tokens
        # (decode context lengths, prefill chunk lengths); all under the token budget
        batches = [([max_len], [2]), ([1] * min(max_seqs, max(1, budget - 128)), [5]), ([64], [9]), ([64], [128])]
        for decode_lens, chunk_lens in batches:
            decode_lens = [min(n, max_len) for n in decode_lens]
            chunk_lens = [min(n, max_len) for n in chunk_lens if len(decode_lens) + n <= budget]
            q_lens = [1] * len(decode_lens) + chunk_lens
            ids, pos, meta = self._dummy_batch(q_lens, list(decode_lens) + chunk_lens, len(decode_lens))
            self.model(ids, pos, self.kv_caches, meta)
        self.platform.synchronize()

    # ---- one step -----------------------------------------------------------------------
    def _prepare(self, out: SchedulerOutput, rows: list[int]):
        """Flat inputs of one step, plus `last`: the row of each sampled request's last token.
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
        max_blocks = 0
        num_decodes = 0
        counting_decodes = True
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
            if counting_decodes and n == 1:
                num_decodes += 1
            else:
                counting_decodes = False
            input_ids.extend(s.token_ids)
            if feed is not None:
                feed_dst.append(len(input_ids) - 1)
                feed_src.append(feed)
            positions.extend(range(start, start + n))
            slots.extend(req_slots)
            qsl.append(qsl[-1] + n)
            seq_lens.append(start + n)
            max_blocks = max(max_blocks, len(blocks))
        b = len(seq_lens)
        tables: list[int] = []
        for s in out.scheduled:
            tables += s.block_ids
            tables += [0] * (max_blocks - len(s.block_ids))
        ids, pos, slot_mapping, last, dst, src = _upload(
            [input_ids, positions, slots, [qsl[i + 1] - 1 for i in rows], feed_dst, feed_src], torch.int64, self.device
        )
        if feed_dst:
            ids.index_copy_(0, dst, self._last_tokens[0].index_select(0, src))
        qsl_t, seq_lens_t, tables_t = _upload([qsl, seq_lens, tables], torch.int32, self.device)
        meta = AttentionMetadata(
            query_start_loc=qsl_t,
            seq_lens=seq_lens_t,
            block_tables=tables_t.view(b, max_blocks),
            slot_mapping=slot_mapping,
            max_query_len=max(qsl[i + 1] - qsl[i] for i in range(b)),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            num_decodes=num_decodes,
        )
        return ids, pos, meta, last

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

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states of one flat batch (every tensor-parallel rank runs it; call it in
        inference mode)."""
        hidden = self.graph_runner.run(ids, pos, meta) if self.graph_runner is not None else None
        if hidden is None:  # prefill or mixed step, a batch past the captured sizes, or eager
            hidden = self.platform.run_model(self.model, ids, pos, self.kv_caches, meta)
        if hidden is None:
            hidden = self.model(ids, pos, self.kv_caches, meta)
        return hidden

    @torch.inference_mode()
    def execute(
        self,
        out: SchedulerOutput,
        min_tokens_pending: dict[str, bool] | None = None,
        before_sync: Callable[[], None] | None = None,
    ) -> StepOutput:
        """Run one step. `before_sync` (the engine's bookkeeping of the previous step) runs
        while the device computes this one, before the host waits for the sampled tokens."""
        return self.collect(self.launch(out, min_tokens_pending), before_sync)

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, min_tokens_pending: dict[str, bool] | None = None) -> LaunchedStep:
        """Queue one step's work on the device (forward, logits, sampling) without waiting
        for it (prompt logprobs, when asked for, do wait)."""
        failed: dict[str, str] = {}
        while True:  # a request whose inputs cannot be built fails; the step runs without it
            rows = [i for i, s in enumerate(out.scheduled) if s.sample]
            try:
                # `last` is uploaded with the inputs: an upload queued behind the forward would wait for it
                ids, pos, meta, last = self._prepare(out, rows)
                break
            except RequestFailure as f:
                logger.error("request %s failed while its step was prepared: %s", f.request_id, f)
                failed[f.request_id] = str(f)
                out = dataclasses.replace(out, scheduled=[s for s in out.scheduled if s.request_id != f.request_id])
                if out.is_empty:
                    self._last_tokens = (None, {})
                    return LaunchedStep(None, [], {}, failed)
        if self.send_inputs is not None:
            self.send_inputs(ids, pos, meta)
        hidden = self.forward(ids, pos, meta)
        prompt_lps = {}
        if any(s.sampling_params.prompt_logprobs is not None for s in out.scheduled):
            prompt_lps = self._prompt_logprobs(out, hidden, meta.query_start_loc_cpu, failed)
        if not rows:
            self._last_tokens = (None, {})
            return LaunchedStep(None, [], prompt_lps, failed)
        logits = self.model.compute_logits(hidden.index_select(0, last))
        chosen = [out.scheduled[i] for i in rows]
        rids = [s.request_id for s in chosen]
        pending = min_tokens_pending or {}
        job = self.sampler.launch(
            logits,
            rids,
            [s.sampling_params for s in chosen],
            [(s.all_token_ids, s.num_prompt_tokens) for s in chosen],
            [pending.get(r, False) for r in rids],
            copy_to_host=self.platform.copy_to_host,
        )
        self._last_tokens = (job.token_ids, {r: i for i, r in enumerate(rids)})
        return LaunchedStep(job, rids, prompt_lps, failed)

    def collect(self, step: LaunchedStep, before_sync: Callable[[], None] | None = None) -> StepOutput:
        """Wait for a launched step's sampled tokens. `before_sync` runs first, while the
        device still computes."""
        if before_sync is not None:
            before_sync()
        if step.job is None:
            return StepOutput({}, prompt_logprobs=step.prompt_logprobs, failed=step.failed)
        result = step.job.result()
        failed = dict(step.failed)
        failed.update((step.request_ids[i], msg) for i, msg in result.failed.items())
        sampled = {r: t for r, t in zip(step.request_ids, result.token_ids) if r not in failed}
        lps = {r: lp for r, lp in zip(step.request_ids, result.logprobs) if lp is not None and r not in failed}
        return StepOutput(sampled, lps, step.prompt_logprobs, failed)
