"""The platform contract: what a hardware plugin provides to the core.

A plugin returns one or more `Platform` subclasses from the `octavo_platforms` hook
(see `hookspecs.py`). The core never asks which vendor it runs on: it calls the
methods below, and every optional method has a documented default written in plain
torch, so a new vendor can start with `attention` alone and grow from there.

KV-cache layout and attention semantics (the part a kernel author must get right):

* The runner allocates one KV tensor per layer with `attention.kv_cache_shape(...)`.
  The default layout is `[2, num_blocks, block_size, num_kv_heads, head_dim]`
  (index 0 = keys, 1 = values). A platform may choose any layout: only its own
  `write_kv` and `attend` read it.
* A *slot* is `block_id * block_size + offset`. `write_kv` stores token t's k/v at
  `slot_mapping[t]`; a slot of -1 means "do not store" (padding).
* A batch is flat: the query tokens of all requests are concatenated, request i owns
  rows `query_start_loc[i]:query_start_loc[i+1]` of q. Those are the *last* `q_len_i`
  positions of its `seq_lens[i]` tokens of context, whose KV (the new tokens included,
  written by `write_kv` just before) lives in the blocks `block_tables[i, :]`.
  Attention is causal: query j of request i (absolute position
  `seq_lens[i] - q_len_i + j`) sees context positions `0..that position`.
  With `sliding_window = W`, it sees only the last W positions up to itself.
* GQA: query head h reads KV head `h // (num_heads // num_kv_heads)`.
* A prefill chunk, a whole prompt and a decode step are the same call with
  different `q_len_i`; one call serves any mix of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from octavo.sampling import inverse_cdf_sample
from octavo.transfer import copy_to_host_now

#: The version of this contract. A plugin declares the version it was built for;
#: the core accepts it when the major numbers are equal and the plugin's minor is
#: not newer than the core's (a plugin may not rely on hooks the core lacks).
API_VERSION = "1.0"


def api_compatible(plugin_version: str, core_version: str = API_VERSION) -> bool:
    try:
        p_major, p_minor = (int(x) for x in str(plugin_version).split(".")[:2])
        c_major, c_minor = (int(x) for x in core_version.split(".")[:2])
    except ValueError:
        return False
    return p_major == c_major and p_minor <= c_minor


@dataclass(frozen=True)
class Availability:
    """Whether a platform can run here. score 0 = unusable, `reason` says why."""

    score: int
    reason: str = ""


@dataclass(frozen=True)
class DeviceProps:
    """Facts about the device, in one place."""

    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    num_compute_units: int = 1
    capabilities: tuple[str, ...] = ()


@dataclass
class AttentionMetadata:
    """Everything `attend` needs for one flat batch. See the module docstring.

    Device tensors are on the platform's device; the `_cpu` lists are the same
    numbers on the host, for kernels that loop or size launches in Python.
    """

    query_start_loc: torch.Tensor  # int32 [B + 1]
    seq_lens: torch.Tensor  # int32 [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks_per_seq]
    slot_mapping: torch.Tensor  # int64 [T]
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int] = field(default_factory=list)
    seq_lens_cpu: list[int] = field(default_factory=list)
    #: number of leading requests whose q_len is 1 (the runner orders decodes first)
    num_decodes: int = 0

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)


class AttentionBackend:
    """Paged attention. Subclass and override all three methods together."""

    #: block sizes the kernels support; None = any
    supported_block_sizes: ClassVar[Sequence[int] | None] = None
    #: head sizes the kernels support; None = any
    supported_head_sizes: ClassVar[Sequence[int] | None] = None

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store k, v ([T, num_kv_heads, head_dim]) at their slots (in place)."""
        raise NotImplementedError

    def attend(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q: [T, num_heads, head_dim] -> output [T, num_heads, head_dim] (q's dtype)."""
        raise NotImplementedError

    def check_config(self, *, head_dim: int, block_size: int, dtype: torch.dtype) -> str | None:
        """Return why this backend cannot serve the config, or None if it can."""
        if self.supported_head_sizes is not None and head_dim not in self.supported_head_sizes:
            return f"head size {head_dim} is not supported (supported: {list(self.supported_head_sizes)})"
        if self.supported_block_sizes is not None and block_size not in self.supported_block_sizes:
            return f"block size {block_size} is not supported (supported: {list(self.supported_block_sizes)})"
        return None


class Communicator:
    """Collectives over a process group. The default is a single process (no-op)."""

    world_size: int = 1
    rank: int = 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        raise RuntimeError("send/recv need world_size > 1")

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        raise RuntimeError("send/recv need world_size > 1")


class TorchDistributedCommunicator(Communicator):
    """Collectives through an initialized torch.distributed process group (gloo, nccl, ...)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized: call init_process_group first (or run with world_size=1)"
            )
        self._dist = dist
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            self._dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size > 1:
            self._dist.broadcast(x, src=src, group=self.group)
        return x

    def send(self, x: torch.Tensor, dst: int) -> None:
        self._dist.send(x, dst=dst, group=self.group)

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        self._dist.recv(x, src=src, group=self.group)
        return x


class Platform:
    """One kind of device. Subclass it in a plugin and return it from `octavo_platforms`.

    Required: `name`, `api_version`, `device_type`, `availability()`, `attention`.
    Everything else has a working default in plain torch.
    """

    #: the name users pass as --device
    name: ClassVar[str] = ""
    #: the contract version the plugin was built for (see API_VERSION)
    api_version: ClassVar[str] = ""
    #: torch device type of the tensors ("cpu", "cuda", "xpu", ...)
    device_type: ClassVar[str] = "cpu"
    #: dtypes this platform computes in
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16, torch.float16)
    #: the distribution that provides it (for messages; discovery reports the real one in PlatformInfo)
    package: ClassVar[str] = ""
    #: the torch.distributed backend for multi-process runs
    dist_backend: ClassVar[str] = "gloo"
    #: tokens per step when the user sets no --max-num-batched-tokens: big enough that
    #: prefill GEMMs run at the device's full rate, small enough that decodes sharing a
    #: step with a prefill chunk are not held up long
    default_max_num_batched_tokens: ClassVar[int] = 2048
    #: async scheduling by default (--async-scheduling): the engine schedules and launches
    #: step N+1 while step N runs, feeding N's sampled tokens to N+1 on the device. It pays
    #: where launching returns before the device has finished (kernels are queued); on a
    #: device that computes as it is called it only adds a wasted token per stop
    async_scheduling: ClassVar[bool] = False
    #: how long a collective waits for a peer before raising (a hung rank must not hang all)
    dist_timeout_s: float = 600.0

    def __init__(self) -> None:
        self.attention: AttentionBackend = self.make_attention_backend()
        self.communicator: Communicator = Communicator()
        #: this process's device index on the host (its tensor-parallel rank; set by init_communicator)
        self.local_rank = 0

    # ---- identity and fitness -------------------------------------------------
    @classmethod
    def availability(cls) -> Availability:
        """Score 0 = not usable here (say why); higher wins for device="auto"."""
        raise NotImplementedError

    def device_props(self) -> DeviceProps:
        return DeviceProps(name=self.name, memory_total_bytes=0, memory_free_bytes=0)

    def torch_device(self, local_rank: int | None = None) -> torch.device:
        """The device of rank `local_rank` (default: this process's, `self.local_rank`)."""
        if local_rank is None:
            local_rank = self.local_rank
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, local_rank)

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        """dtype for dtype="auto", given the checkpoint's own dtype (None if unknown)."""
        if model_dtype in self.supported_dtypes:
            return model_dtype
        return self.supported_dtypes[0]

    def check_and_update_config(self, config: Any) -> None:
        """Fix up or reject the engine config for this platform (raise ValueError)."""

    # ---- kernels ---------------------------------------------------------------
    def make_attention_backend(self) -> AttentionBackend:
        raise NotImplementedError

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = x @ weight.T + bias. weight is [out, in] as stored in checkpoints."""
        return torch.nn.functional.linear(x, weight, bias)

    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm in float32. With `residual`, first x = x + residual and return
        (normed, x) so the caller keeps the new residual stream."""
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        # the weight multiplies after the cast back, as Hugging Face's Llama does
        out = weight * out.to(x.dtype)
        return out if residual is None else (out, residual)

    def rotary(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neox-style (rotate-half) rotary embedding.

        q: [T, Hq, D], k: [T, Hk, D]; cos_sin_cache: [max_pos, rot_dim] float32 whose first
        half is cos and second half sin of each frequency; rot_dim <= D (partial rotary
        rotates the first rot_dim features). Returns (q, k) in their dtype; a platform may
        rotate the given tensors in place and return them (the layer uses only the results).
        """
        cos_sin = cos_sin_cache.index_select(0, positions)
        rot = cos_sin.shape[-1]
        cos, sin = cos_sin.chunk(2, dim=-1)
        cos = cos.unsqueeze(1)
        sin = sin.unsqueeze(1)

        def apply(x: torch.Tensor) -> torch.Tensor:
            xr = x[..., :rot].float()
            x1, x2 = xr.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
            if rot == x.shape[-1]:
                return out
            return torch.cat((out, x[..., rot:]), dim=-1)

        return apply(q), apply(k)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., 2 * d] -> silu(x[..., :d]) * x[..., d:]."""
        gate, up = x.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    def sample(self, logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        """One token per row of logits [S, V] (float32), by inverse CDF: with weights
        exp(logits / t - max), the first token whose cumulative weight exceeds u[i] times
        the row's total (t = temperatures[i], all 1 when None; u [S] in [0, 1)). Tokens at
        -inf (top-k / top-p / min-p / banned) weigh 0 and are never drawn. Returns [S] int64."""
        return inverse_cdf_sample(logits, temperatures, u)

    # ---- memory and collectives ---------------------------------------------------
    def allocate_kv_cache(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """One layer's KV cache of `attention.kv_cache_shape(...)`, zero-filled (kernels may
        read, and mask, slots no token has written yet)."""
        return torch.zeros(shape, dtype=dtype, device=self.torch_device())

    def kv_cache_budget_bytes(self, config: Any, model_bytes: int) -> int:
        """How many bytes the KV cache may take. CPU-like platforms read
        config.cache.kv_cache_memory; accelerators profile and apply
        gpu_memory_utilization."""
        return int(config.cache.kv_cache_memory)

    def init_communicator(self, world_size: int, rank: int, init_method: str) -> Communicator:
        """Join the process group of a tensor-parallel run (one process per rank, all on this
        host, so rank = local_rank = device index). A collective that waits longer than
        `dist_timeout_s` for a peer raises instead of hanging. Plugins that override this (to
        pick the device first, or to split host cores between ranks) call super()."""
        self.local_rank = rank
        if world_size == 1:
            self.communicator = Communicator()
            return self.communicator
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                self.dist_backend,
                init_method=init_method,
                world_size=world_size,
                rank=rank,
                timeout=datetime.timedelta(seconds=self.dist_timeout_s),
            )
        self.communicator = TorchDistributedCommunicator()
        return self.communicator

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on synchronous devices)."""

    def copy_to_host(self, tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        """Start copying device tensors to host memory; the returned callable waits for those
        copies and returns the host tensors. On an asynchronous device it must not wait for
        work queued after the copies (the next step, under async scheduling). The default
        copies at once, which is right for devices that compute as they are called."""
        return copy_to_host_now(tensors)

    # ---- optional: memory profiling and graph capture ------------------------------
    def profile_memory(self, forward: Callable[[], Any]) -> None:
        """Called once by the runner before the KV cache is sized, with a callable that runs
        one forward pass at the largest token budget. A platform that sizes its cache from
        device memory runs it while watching its own peak-memory counter and uses the peak in
        `kv_cache_budget_bytes`. The default does not call it (fixed-size caches)."""

    def run_model(self, model: Any, input_ids: Any, positions: Any, kv_caches: list, meta: AttentionMetadata) -> Any:
        """Optionally run a whole forward of `model` (one of octavo.models) your own way, e.g.
        a decode step in one native call instead of a few hundred op calls from Python.
        Return the hidden states `model(input_ids, positions, kv_caches, meta)` would return
        (the same values: greedy equivalence is tested through it), or None to let the model
        run op by op. Called for eager steps only (replayed graphs bypass it). Default: None."""
        return None

    def warm_up(self, forward: Callable[[], Any]) -> None:
        """Called once after the KV cache is allocated, with a callable that runs a few small
        forwards over the batch shapes serving meets (long and short decodes, prefill chunks).
        A platform whose kernels compile on first use (Triton, other JITs) runs it, so the
        compiles happen at start-up rather than in the middle of the first requests. The
        default does not call it. Under tensor parallelism every rank must decide alike:
        the forwards run collectives."""

    def graph_capture_supported(self) -> bool:
        """Whether `capture_graph` works here. The runner then captures decode steps
        (see octavo.graph_runner) unless enforce_eager is set."""
        return False

    def capture_graph(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        """Capture the device work of `fn()` into a replayable graph.

        Returns (output, replay): `output` is what `fn` returned during capture (tensors
        at fixed addresses that each `replay()` rewrites); `replay()` re-executes the
        captured work reading the same input addresses. Host-side Python in `fn` runs only
        at capture. Graphs of one platform should share one memory pool, captured
        largest first. The caller has run `fn` once before (warm-up)."""
        raise NotImplementedError(f"platform {self.name!r} does not capture graphs")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "api_version": self.api_version, "device_type": self.device_type}
