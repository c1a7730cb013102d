"""The Neuron step runner: forward, logits and sampling as one program per static shape.

Core pads every step to the platform's buckets (`ModelRunner._prepare`) and warm-up runs each
bucket once (`ModelRunner._compile_static_shapes`, through `forward`), so every program compiles
at start-up with the compiler the platform names (`torch.compile(backend="neuron")`, or a CPU
back end for tests). A step then returns one token per request from the device; requests whose
sampling needs more than the device's sampler does are sampled by core's sampler on the step's
logits, and a top_k past the device's limit is refused (`octavo_neuron.sampler`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable

import torch

from octavo.model_runner import LaunchedStep
from octavo.platform import ForwardBatch
from octavo.request import RequestFailure
from octavo.sampling import RowByRowJob, SampleJob, SamplerOutput
from octavo.sampling_params import SamplingParams
from octavo.scheduler import SchedulerOutput
from octavo.transfer import to_device
from octavo_neuron.sampler import Placement, SamplingInputs, placement, refusal, sample
from octavo_static.runner import CompilingRunner

logger = logging.getLogger("octavo")


def _step(model, attention, ops, batch: ForwardBatch, kv_caches: list, last: torch.Tensor, sampling: SamplingInputs):
    """One step as one program: hidden states [T, H], the sampled rows' logits [R, V] and
    their tokens [R]."""
    hidden = model(batch.input_ids, batch.positions, kv_caches, attention.build_metadata(batch))
    logits = model.compute_logits(hidden.index_select(0, last))
    return hidden, logits, sample(logits, sampling, ops)


class _StepSamples:
    """A step's tokens (device, one per sampled request), with the eager sampler's job for
    the rows it took (their logprobs and failures); `result()` waits for both."""

    def __init__(
        self,
        token_ids: torch.Tensor,
        eager: tuple[list[int], SampleJob | RowByRowJob] | None,
        copy_to_host: Callable[[list[torch.Tensor]], Callable[[], list[torch.Tensor]]],
    ) -> None:
        self.token_ids = token_ids
        self._eager = eager
        self._fetch = copy_to_host([token_ids])

    def result(self) -> SamplerOutput:
        tokens = self._fetch()[0].tolist()
        logprobs: list = [None] * len(tokens)
        failed: dict[int, str] = {}
        if self._eager is not None:
            rows, job = self._eager
            out = job.result()
            for j, row in enumerate(rows):
                logprobs[row] = out.logprobs[j]
            failed = {rows[j]: why for j, why in out.failed.items()}
        return SamplerOutput(tokens, logprobs, failed)


class NeuronRunner(CompilingRunner):
    """Core's runner with the whole step (forward, logits, on-device sampling) compiled per
    static shape by the platform's compiler (`Platform._compile_backend`)."""

    def __init__(self, config, platform, source) -> None:
        self._compiler = platform._compile_backend  # before CompilingRunner makes its compile counter
        super().__init__(config, platform, source)
        self._step = self._compile(_step)
        # the uniform draws of seeded requests sampled on the device, one stream per request
        self._generators: dict[str, random.Random] = {}

    def _run_step(self, batch: ForwardBatch, last: torch.Tensor, sampling: SamplingInputs):
        p = self.platform
        return self._run(self._step, self.model, p.attention, p.ops, batch, self.kv_caches, last, sampling)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """The hidden states of a padded batch, through the same program as a served step
        (warm-up compiles every bucket through here): every row greedy, row 0 sampled."""
        rows = batch.num_reqs
        last = to_device([0] * rows, torch.int64, self.device)
        return self._run_step(batch, last, SamplingInputs.build([], [], rows, self.device))[0]

    def _uniforms(self, request_ids: list[str], params: list[SamplingParams | None]) -> list[float]:
        """One U[0, 1) per row as core's sampler draws it: a seeded request from its own
        generator, the others from torch's global one (rows sampled eagerly: unused)."""
        u = torch.rand(len(params), dtype=torch.float64).tolist()
        for i, p in enumerate(params):
            if p is not None and p.seed is not None and not p.greedy:
                g = self._generators.setdefault(request_ids[i], random.Random(p.seed))
                u[i] = g.random()
        return u

    @torch.inference_mode()
    def launch(
        self, scheduler_output: SchedulerOutput, min_tokens_pending: dict[str, bool] | None = None
    ) -> LaunchedStep:
        out, pending = scheduler_output, min_tokens_pending or {}
        # requests the device cannot sample fail before anything of theirs runs
        failed = {s.request_id: why for s in out.scheduled if (why := refusal(s.sampling_params)) is not None}
        for rid, why in failed.items():
            logger.error("request %s refused: %s", rid, why)
        out = dataclasses.replace(out, scheduled=[s for s in out.scheduled if s.request_id not in failed])
        prepared = self._prepare_or_fail(out, failed)
        if prepared is None:
            self._last_tokens = (None, {})
            return LaunchedStep(None, [], {}, failed)
        out, rows, batch, last = prepared
        chosen = [out.scheduled[i] for i in rows]
        rids = [s.request_id for s in chosen]
        where = [placement(s.sampling_params, pending.get(s.request_id, False)) for s in chosen]
        on_device = [s.sampling_params if w is Placement.DEVICE else None for s, w in zip(chosen, where)]
        sampling = SamplingInputs.build(on_device, self._uniforms(rids, on_device), batch.num_reqs, self.device)
        hidden, logits, tokens = self._run_step(batch, last, sampling)

        prompt_lps = {}
        if any(s.sampling_params.prompt_logprobs is not None for s in out.scheduled):
            prompt_lps = self._prompt_logprobs(out, hidden, batch.query_start_loc_cpu, failed)
        if not rows:
            self._last_tokens = (None, {})
            return LaunchedStep(None, [], prompt_lps, failed)
        token_ids, eager = self._sample_eagerly(tokens[: len(rows)], logits, chosen, where, pending)
        self._last_tokens = (token_ids, {r: i for i, r in enumerate(rids)})
        samples = _StepSamples(token_ids, eager, self.platform.device.copy_to_host)
        return LaunchedStep(samples, rids, prompt_lps, failed)

    def _prepare_or_fail(self, out: SchedulerOutput, failed: dict[str, str]):
        """Core's padded inputs of the step, less the requests whose inputs cannot be built (they
        go into `failed`): (out, sampled rows, batch, last), or None when no request is left."""
        while not out.is_empty:
            rows = [i for i, s in enumerate(out.scheduled) if s.sample]
            try:
                batch, last = self._prepare(out, rows)
                return out, rows, batch, last
            except RequestFailure as f:
                logger.error("request %s failed while its step was prepared: %s", f.request_id, f)
                failed[f.request_id] = str(f)
                out = dataclasses.replace(out, scheduled=[s for s in out.scheduled if s.request_id != f.request_id])
        return None

    def _sample_eagerly(self, token_ids, logits, chosen, where, pending):
        """The rows placed off the device, sampled by core's sampler on their logits (logprobs,
        penalties, biases, ...): their tokens replace the device's; (tokens, (rows, job) or None)."""
        rows = [j for j, w in enumerate(where) if w is Placement.EAGER]
        if not rows:
            return token_ids, None
        index = to_device(rows, torch.int64, self.device)
        rids = [chosen[j].request_id for j in rows]
        job = self.sampler.launch(
            logits.index_select(0, index),
            rids,
            [chosen[j].sampling_params for j in rows],
            [(chosen[j].all_token_ids, chosen[j].num_prompt_tokens) for j in rows],
            [pending.get(r, False) for r in rids],
            copy_to_host=self.platform.device.copy_to_host,
        )
        return token_ids.index_copy(0, index, job.token_ids), (rows, job)

    def forget(self, request_id: str) -> None:
        super().forget(request_id)
        self._generators.pop(request_id, None)
