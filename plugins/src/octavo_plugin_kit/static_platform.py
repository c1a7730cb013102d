"""A static-shape platform on the CPU: what a compiled-graph accelerator (XLA, Neuron) asks
of core, exercised with torch.compile as the stand-in compiler.

`StaticReferencePlatform` ("static-reference") declares `StaticShapes`, so core pads every
step to a bucket and runs every bucket once at start-up; its runner runs the model through
`torch.compile(fullgraph=True, dynamic=False)`, which refuses a graph break (a host sync, a
shape read from data) and compiles one program per input shape, as XLA does. It counts the
compilations: any after warm-up is a step shape the buckets missed (`stats().num_recompiles`).

The compiler back end only captures the graph and runs it eagerly (no code generation): the
point is the contract (static shapes, no host syncs, nothing compiled mid-serving), not speed.
It does not prove that a graph lowers to a real device's compiler, nor anything about its
memory or speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.model_runner import ModelRunner
from octavo.platform import (
    AttentionBackend,
    AttentionSpec,
    Availability,
    ForwardBatch,
    KVCacheSpec,
    Platform,
    RunnerStats,
    SchedulingPolicy,
    StaticShapes,
    hookimpl,
)

#: every step shape the platform compiles: prompts of up to 256 tokens in one step, up to 4
#: requests, contexts of up to 4 or 16 blocks of 16 (the widest holds the longest context
#: that the token budget admits); 3 x 2 x 2 = 12 programs, each traced in about half a second
#: for the tiny test models
SHAPES = StaticShapes(token_buckets=(16, 64, 256), request_buckets=(1, 4), block_buckets=(4, 16))
BLOCK_SIZE = 16
_NO_LIMIT = 1 << 30


@dataclass(frozen=True)
class _StaticMeta:
    """A step as the kernels below read it: device tensors only, every shape a bucket's."""

    slot_mapping: torch.Tensor  # int64 [T], -1 = padding
    block_tables: torch.Tensor  # int64 [B, W]
    token_req: torch.Tensor  # int64 [T]: the request of each token (clamped for padding)
    query_pos: torch.Tensor  # int64 [T]: its absolute position
    context_len: torch.Tensor  # int64 [T]: its request's seq_len, 0 for padding tokens


class StaticAttention(AttentionBackend):
    """Paged attention with every shape fixed by the step's buckets and nothing read back to
    the host: each token finds its request with a search over query_start_loc, gathers that
    request's whole (bucket-wide) block table and masks what it must not see.

    The cache has one block past those core asked for: padding tokens (slot -1) write there,
    so storing a step's K/V stays one scatter of a fixed shape. No table points at it."""

    def allocate(self, layer: AttentionSpec, spec: KVCacheSpec, num_blocks: int) -> torch.Tensor:
        shape = (2, num_blocks + 1, spec.block_size, layer.num_kv_heads, layer.head_dim)
        return torch.zeros(shape, dtype=spec.dtype, device=self.device.torch_device())

    def build_metadata(self, batch: ForwardBatch) -> _StaticMeta:
        qsl = batch.query_start_loc.long()
        seq_lens = batch.seq_lens.long()
        num_reqs = seq_lens.shape[0]
        t = torch.arange(batch.slot_mapping.shape[0], device=qsl.device)
        # request i owns tokens qsl[i] <= t < qsl[i + 1]; padding requests own none, and
        # padding tokens (t >= qsl[-1], the real token count) land past the last request
        ends = qsl[1:]
        req = torch.searchsorted(ends, t, right=True)
        real = req < num_reqs
        req = req.clamp(max=num_reqs - 1)
        # the queries are the last q_len positions of the context: t sits ends[req] - t before its end
        query_pos = seq_lens[req] - (ends[req] - t)
        return _StaticMeta(
            slot_mapping=batch.slot_mapping,
            block_tables=batch.block_tables.long(),
            token_req=req,
            query_pos=torch.where(real, query_pos, 0),
            context_len=torch.where(real, seq_lens[req], 0),
        )

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: _StaticMeta) -> None:
        num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2]
        slots = meta.slot_mapping
        trash = (num_blocks - 1) * block_size + torch.arange(slots.shape[0], device=slots.device) % block_size
        slots = torch.where(slots >= 0, slots, trash)
        index = (slots // block_size, slots % block_size)
        kv_cache[0].index_put_(index, k.to(kv_cache.dtype))
        kv_cache[1].index_put_(index, v.to(kv_cache.dtype))

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: _StaticMeta, layer: AttentionSpec) -> torch.Tensor:
        num_tokens, num_heads, head_dim = q.shape
        num_kv_heads = kv_cache.shape[3]
        # each token's request's blocks, in table order: [T, W * block_size, num_kv_heads, D]
        blocks = meta.block_tables[meta.token_req]
        k = kv_cache[0][blocks].flatten(1, 2).float()
        v = kv_cache[1][blocks].flatten(1, 2).float()
        k_pos = torch.arange(k.shape[1], device=q.device)[None, :]
        q_pos = meta.query_pos[:, None]
        visible = k_pos < meta.context_len[:, None]  # [T, S]; none for padding tokens
        if layer.causal:
            visible &= k_pos <= q_pos
        if layer.sliding_window is not None:
            visible &= k_pos > q_pos - layer.sliding_window
        # slots past a context (a padded table reads block 0, a new block holds stale KV) may
        # hold anything, even inf or NaN: their scores are masked below, and their values
        # must not reach the sum as 0 * inf
        v = torch.where(visible[:, :, None, None], v, 0.0)
        qg = q.float().unflatten(1, (num_kv_heads, num_heads // num_kv_heads))  # head h reads KV head h // group
        scores = torch.einsum("tkgd,tskd->tkgs", qg, k) * layer.scale
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        # a row that sees nothing (padding) has max -inf: shift by 0 instead, so it sums to 0, not NaN
        top = scores.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).min)
        weights = torch.exp(scores - top)
        probs = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        out = torch.einsum("tkgs,tskd->tkgd", probs, v)
        return out.reshape(num_tokens, num_heads, head_dim).to(q.dtype)


class _CompileCounter:
    """The compiler back end: count each program, then run its captured graph as it is. It
    holds no reference to the runner: torch keeps compiled programs (and their back end) for
    the life of the process, and must not keep a finished engine's model and cache with them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.count += 1
        return graph.forward


def _run_model(
    model: torch.nn.Module, attention: AttentionBackend, batch: ForwardBatch, kv_caches: list
) -> torch.Tensor:
    """One step's hidden states: the region compiled per step shape."""
    return model(batch.input_ids, batch.positions, kv_caches, attention.build_metadata(batch))


class StaticRunner(ModelRunner):
    """Core's runner with the forward compiled per step shape, as a graph compiler would."""

    def __init__(self, config, platform, source) -> None:
        super().__init__(config, platform, source)
        self._compiles = _CompileCounter()
        self._compiles_at_start: int | None = None
        self._step = torch.compile(_run_model, fullgraph=True, dynamic=False, backend=self._compiles)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        super().initialize_kv_cache(num_blocks)  # compiles every bucket (core's _compile_static_shapes)
        self._compiles_at_start = self._compiles.count

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        # every program of every engine in the process hangs off one code object; torch's
        # default limit (8 programs) would refuse the ninth shape. The counter, not that
        # limit, is what reports a shape compiled mid-serving.
        with torch._dynamo.config.patch(recompile_limit=_NO_LIMIT, accumulated_recompile_limit=_NO_LIMIT):
            return self._step(self.model, self.platform.attention, batch, self.kv_caches)

    def stats(self) -> RunnerStats:
        if self._compiles_at_start is None:
            return RunnerStats()
        return RunnerStats(num_recompiles=self._compiles.count - self._compiles_at_start)


class StaticReferencePlatform(Platform):
    """The CPU as a static-shape device (see the module doc). For tests and for plugin
    authors to read; it scores 1, so device="auto" takes any other usable platform first."""

    name = "static-reference"
    api_version = "2.0"
    package = "octavo-plugin-kit"
    attention_cls = StaticAttention
    runner_cls = StaticRunner
    scheduling = SchedulingPolicy(
        default_max_num_batched_tokens=SHAPES.token_buckets[-1],
        chunked_prefill=False,
        mixed_steps=False,
        block_size=BLOCK_SIZE,
        static_shapes=SHAPES,
    )

    @classmethod
    def availability(cls) -> Availability:
        return Availability(score=1, reason="the CPU through torch.compile with static shapes, for tests")


@hookimpl
def octavo_platforms() -> list[type[Platform]]:
    return [StaticReferencePlatform]
