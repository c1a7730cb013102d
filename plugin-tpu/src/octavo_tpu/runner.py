"""The TPU step runner: core's model, run through torchax as one compiled XLA program per bucket.

One model definition: the runner builds and loads core's torch model exactly as core's eager
runner does (it subclasses `ModelRunner` for that, and for core's padding of a step to its
buckets, `_prepare`), then never runs it eagerly. Its weights become JAX arrays on the device
mesh, and one step (forward, the sampled rows' logits, sampling) is a JAX function that runs
core's `forward` and `compute_logits` under torchax: every torch op of the model is lowered to
jax.numpy, and the attention back end's calls run the Pallas kernel on the traced arrays.

Static shapes: every (tokens, requests, block-table width) shape the platform's buckets allow
is lowered and compiled ahead of time in `initialize_kv_cache`. A step runs the executable of
its padded shape; a shape without one is compiled on the spot and counted
(`stats().num_recompiles`). The KV cache is donated to each step and returned by it.

Tensor parallelism is SPMD in this one process: the weights are sharded over a 1-D mesh of the
run's devices (rows of the column-parallel projections, columns of the row-parallel ones, the
vocabulary of the embedding and head), the KV cache over its KV heads, and XLA partitions the
program and inserts the collectives; the Pallas kernel, which XLA cannot partition, runs per
device on its heads (`TpuAttention.forward`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from octavo.model_runner import ModelRunner
from octavo.platform import RunnerStats, StepOutput
from octavo.request import RequestFailure
from octavo_tpu.attention import TP_AXIS, PagedKVCache
from octavo_tpu.kernels.paged_attention import step_metadata
from octavo_tpu.sampling import SamplingArrays, sample
from octavo_tpu.torchax_import import torchax

logger = logging.getLogger("octavo")

#: how each weight is split over the mesh (by the end of its name): the first dimension of
#: column-parallel projections and of the vocabulary tables, the second of row-parallel ones.
#: Any split computes the same numbers (XLA moves data where a layout needs it); these keep
#: the big GEMMs local. Norms, rotary tables and biases of row-parallel layers are replicated.
_SHARDING = {
    "qkv_proj.weight": P(TP_AXIS, None),
    "qkv_proj.bias": P(TP_AXIS),
    "gate_up_proj.weight": P(TP_AXIS, None),
    "o_proj.weight": P(None, TP_AXIS),
    "down_proj.weight": P(None, TP_AXIS),
    "embed_tokens": P(TP_AXIS, None),
    "lm_head.weight": P(TP_AXIS, None),
}


class _Step(torch.nn.Module):
    """The torch side of one step: core's forward, then the logits of the rows to sample."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, kv_caches, meta, last):
        hidden = self.model(input_ids, positions, kv_caches, meta)
        return self.model.compute_logits(hidden.index_select(0, last))


@dataclass
class _LaunchedStep:
    tokens: jax.Array | None  # [R] sampled on the device
    logits: jax.Array | None  # [R, V] of the rows to sample, for core's sampler on the host
    request_ids: list[str]
    scheduled: list[Any]  # their ScheduledRequests
    host_sampling: bool
    pending: list[bool]
    failed: dict[str, str] = field(default_factory=dict)


def _needs_host_sampling(params: Any, min_tokens_pending: bool) -> bool:
    """Sampling options the compiled step does not implement: core's sampler runs them."""
    return bool(
        params.penalized
        or params.logit_bias
        or params.allowed_token_ids is not None
        or params.logprobs is not None
        or min_tokens_pending
    )


class TpuRunner(ModelRunner):
    """See the module doc."""

    def __init__(self, config, platform, source) -> None:
        super().__init__(config, platform, source)  # core's model, built and loaded on the host
        tp = config.parallel.tensor_parallel_size
        devices = platform.device._jax_devices()[:tp]
        self._mesh = jax.sharding.Mesh(np.array(devices), (TP_AXIS,))
        platform.attention._mesh = self._mesh
        self._step_module = _Step(self.model)
        self._params = self._place_weights()
        self._release_host_weights()
        self._jitted = jax.jit(self._run_step, donate_argnums=(1,))
        self._executables: dict[tuple[int, int, int], Any] = {}
        self._recompiles: int | None = None  # None until warm-up has compiled every bucket
        #: compile-time memory of each warmed-up shape (XLA's memory analysis), for reports
        self._compile_memory: dict[tuple[int, int, int], Any] = {}

    # ---- weights ----------------------------------------------------------------------
    def _place_weights(self) -> dict[str, jax.Array]:
        """Every parameter and buffer of core's model as a JAX array on the mesh."""
        tp = self._mesh.size
        placed = {}
        named = list(self._step_module.named_parameters()) + list(self._step_module.named_buffers())
        for name, tensor in named:
            spec = next((s for suffix, s in _SHARDING.items() if name.endswith(suffix)), P())
            dims = [d for d, axis in enumerate(spec) if axis is not None]
            if any(tensor.shape[d] % tp for d in dims):
                spec = P()  # a dimension the mesh does not divide: replicate it
            host = tensor.detach()
            if host.dtype == torch.bfloat16:
                array = host.view(torch.int16).numpy().view(jnp.bfloat16)
            else:
                array = host.numpy()
            placed[name] = jax.device_put(array, NamedSharding(self._mesh, spec))
        return placed

    def _release_host_weights(self) -> None:
        """The host copies are never read again (each step passes the device arrays in)."""
        for module in self._step_module.modules():
            for param in list(module.parameters(recurse=False)):
                param.data = torch.empty(0, dtype=param.dtype)

    # ---- the compiled step --------------------------------------------------------------
    def _run_step(self, params, caches, inputs):
        """One step as a JAX function (traced once per shape): returns the sampled tokens, the
        sampled rows' logits and every layer's new cache."""
        tx = torchax()
        env = tx.default_env()
        meta = step_metadata(
            inputs["query_start_loc"], inputs["seq_lens"], inputs["block_tables"], inputs["slot_mapping"]
        )
        holders = [PagedKVCache(pages) for pages in caches]
        with warnings.catch_warnings():
            # core's model asks for int64 indices; JAX without x64 gives int32, which indexes alike
            warnings.filterwarnings("ignore", message="Explicitly requested dtype.*int64")
            torch_params, ids, positions, last = env.j2t_iso(
                (params, inputs["input_ids"], inputs["positions"], inputs["last"])
            )
            with env, torch.no_grad():
                logits = torch.func.functional_call(
                    self._step_module, torch_params, (ids, positions, holders, meta, last)
                )
            logits = env.t2j_iso(logits)
        tokens = sample(logits, SamplingArrays(**inputs["sampling"]))
        return tokens, logits, [h.pages for h in holders]

    def _input_specs(self, shape: tuple[int, int, int], mesh: jax.sharding.Mesh) -> dict[str, Any]:
        """The step's inputs of one bucket shape, as shape/dtype/sharding (replicated)."""
        tokens, reqs, width = shape
        rep = NamedSharding(mesh, P())

        def spec(dims, dtype):
            return jax.ShapeDtypeStruct(dims, dtype, sharding=rep)

        i32, f32 = jnp.int32, jnp.float32
        return {
            "input_ids": spec((tokens,), i32),
            "positions": spec((tokens,), i32),
            "slot_mapping": spec((tokens,), i32),
            "query_start_loc": spec((reqs + 1,), i32),
            "seq_lens": spec((reqs,), i32),
            "block_tables": spec((reqs, width), i32),
            "last": spec((reqs,), i32),
            "sampling": {
                "greedy": spec((reqs,), jnp.bool_),
                "temperature": spec((reqs,), f32),
                "top_k": spec((reqs,), i32),
                "top_p": spec((reqs,), f32),
                "min_p": spec((reqs,), f32),
                "u": spec((reqs,), f32),
            },
        }

    def _lower(self, shape: tuple[int, int, int], mesh: jax.sharding.Mesh | None = None, caches: list | None = None):
        """The step lowered for one shape. `mesh` (default: the run's) and `caches` (default:
        the allocated ones) let a test lower it for devices this host does not have."""
        mesh = mesh or self._mesh

        def abstract(x):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, x.sharding.spec))

        params = jax.tree.map(abstract, self._params)
        caches = [abstract(c) for c in (self.kv_caches if caches is None else caches)]
        return self._jitted.lower(params, caches, self._input_specs(shape, mesh))

    def _compile(self, shape: tuple[int, int, int]) -> Any:
        t0 = time.perf_counter()
        executable = self._lower(shape).compile(self.platform.device._compiler_options())
        self._executables[shape] = executable
        self._compile_memory[shape] = executable.memory_analysis()
        if self._recompiles is not None:
            self._recompiles += 1
            logger.warning(
                "compiled step shape %s after warm-up (%.2f s): the buckets missed it", shape, time.perf_counter() - t0
            )
        return executable

    # ---- the runner's calls ---------------------------------------------------------------
    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate every layer's pages on the mesh, then compile every bucket shape."""
        attention = self.platform.attention
        self.kv_caches = [
            attention.allocate(spec, kv, num_blocks).pages for spec, kv in zip(self.specs, self._kv_specs())
        ]
        t0 = time.perf_counter()
        sc = self.config.scheduler
        widest = -(-self.config.model.max_model_len // self.block_size)
        assert self.static is not None  # the platform declares static shapes
        shapes = self.static.shapes((sc.max_num_batched_tokens, sc.max_num_seqs, widest))
        for shape in shapes:
            self._compile(shape)
        self._recompiles = 0
        logger.info("compiled %d step shapes at start-up in %.2f s", len(shapes), time.perf_counter() - t0)

    def launch(self, scheduler_output, min_tokens_pending=None) -> _LaunchedStep:
        pending_of = min_tokens_pending or {}
        out, failed = scheduler_output, {}
        for s in out.scheduled:
            if s.sampling_params.prompt_logprobs is not None:
                failed[s.request_id] = (
                    f"prompt_logprobs is not supported on device {self.platform.name!r}: its compiled step returns "
                    "the logits of the sampled rows only; leave prompt_logprobs unset"
                )
        while True:  # a request whose inputs cannot be built fails; the step runs without it
            kept = [s for s in out.scheduled if s.request_id not in failed]
            if len(kept) != len(out.scheduled):
                out = type(out)(kept, sum(len(s.token_ids) for s in kept), out.preempted_ids)
            if out.is_empty:
                return _LaunchedStep(None, None, [], [], False, [], failed)
            rows = [i for i, s in enumerate(out.scheduled) if s.sample]
            try:
                batch, last = self._prepare(out, rows)
                break
            except RequestFailure as f:
                logger.error("request %s failed while its step was prepared: %s", f.request_id, f)
                failed[f.request_id] = str(f)
        chosen = [out.scheduled[i] for i in rows]
        rids = [s.request_id for s in chosen]
        params = [s.sampling_params for s in chosen]
        pending = [pending_of.get(r, False) for r in rids]
        host_sampling = any(_needs_host_sampling(p, m) for p, m in zip(params, pending))
        shape = (len(batch.slot_mapping), batch.num_reqs, batch.block_tables.shape[1])
        inputs = self._inputs(batch, last, params, rids, draw=not host_sampling)
        executable = self._executables.get(shape) or self._compile(shape)
        tokens, logits, self.kv_caches = executable(self._params, self.kv_caches, inputs)
        if not rows:
            return _LaunchedStep(None, None, [], [], False, [], failed)
        return _LaunchedStep(tokens, logits, rids, chosen, host_sampling, pending, failed)

    def _inputs(self, batch, last: torch.Tensor, params: list, rids: list[str], draw: bool) -> dict[str, Any]:
        """The step's device inputs: the padded batch, and one sampling row per request row."""
        reqs = batch.num_reqs
        n = len(params)
        greedy = np.ones(reqs, bool)
        temperature = np.ones(reqs, np.float32)
        top_k = np.zeros(reqs, np.int32)
        top_p = np.ones(reqs, np.float32)
        min_p = np.zeros(reqs, np.float32)
        u = np.zeros(reqs, np.float32)
        for i, p in enumerate(params):
            greedy[i] = p.greedy
            if not p.greedy:
                temperature[i], top_k[i], top_p[i], min_p[i] = p.temperature, p.top_k, p.top_p, p.min_p
        if draw and not greedy[:n].all():  # core's generators, as its sampler draws them
            u[:n] = self.sampler._uniforms(rids, params).numpy()
        host = {
            "input_ids": batch.input_ids,
            "positions": batch.positions,
            "slot_mapping": batch.slot_mapping,
            "query_start_loc": batch.query_start_loc,
            "seq_lens": batch.seq_lens,
            "block_tables": batch.block_tables,
            "last": last,
        }
        rep = NamedSharding(self._mesh, P())
        arrays = {k: jax.device_put(v.to(torch.int32).numpy(), rep) for k, v in host.items()}
        sampling = {
            "greedy": greedy,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "u": u,
        }
        arrays["sampling"] = {k: jax.device_put(v, rep) for k, v in sampling.items()}
        return arrays

    def collect(self, launched: _LaunchedStep, before_sync: Callable[[], None] | None = None) -> StepOutput:
        step = launched
        if before_sync is not None:
            before_sync()
        if step.tokens is None:
            return StepOutput({}, failed=step.failed)
        n = len(step.request_ids)
        if not step.host_sampling:
            tokens = np.asarray(jax.device_get(step.tokens))[:n].tolist()
            return StepOutput(dict(zip(step.request_ids, tokens)), failed=step.failed)
        # options the device does not implement: core's sampler, on the step's logits
        logits = torch.from_numpy(np.asarray(jax.device_get(step.logits))[:n].copy())
        result = self.sampler.launch(
            logits,
            step.request_ids,
            [s.sampling_params for s in step.scheduled],
            [(s.all_token_ids, s.num_prompt_tokens) for s in step.scheduled],
            step.pending,
        ).result()
        failed = dict(step.failed)
        failed.update((step.request_ids[i], msg) for i, msg in result.failed.items())
        sampled = {r: t for r, t in zip(step.request_ids, result.token_ids) if r not in failed}
        lps = {r: lp for r, lp in zip(step.request_ids, result.logprobs) if lp is not None and r not in failed}
        return StepOutput(sampled, lps, failed=failed)

    def stats(self) -> RunnerStats:
        return RunnerStats(num_recompiles=self._recompiles or 0)

    def shutdown(self) -> None:
        self._executables = {}
        super().shutdown()
