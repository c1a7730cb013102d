"""The CPU platform: native C++ kernels (csrc/, see `_native`) where they apply, torch ops elsewhere.

Native, for float32 and bfloat16: paged attention and KV writes (`attention.py`), RMSNorm
with the fused residual add, rotary (in place), SiLU-and-mul, and linear: bf16 on AVX512_BF16
CPUs a GEMM on weights packed once (`gemm`) at every row count, otherwise for decode-sized row
counts a GEMV that streams the weights near memory bandwidth (`linear_path`). Other GEMMs stay
with torch.
Decode steps (every request one token) run every layer in one native call (`run_model`, see
decode_forward.py) where those kernels cover the step's linears.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from octavo.platform import API_VERSION, Availability, DeviceProps, Platform
from octavo_cpu import _native, gemm
from octavo_cpu.attention import CpuAttention

# Rows of x up to which the native GEMV serves a linear, per dtype (past them: torch).
_LINEAR_MAX_ROWS = {torch.bfloat16: 8, torch.float32: 8}


def linear_path(dtype: torch.dtype, rows: int) -> str | None:
    """The native kernel CpuPlatform.linear (and the one-call decode step) uses for `rows`
    rows of x in `dtype`: "gemm", "gemv", or None for torch's linear.

    bf16 where the packed GEMM runs takes it at every row count: with its threads splitting
    the weight's panels it streams the packed weights faster than the GEMV reads row-major
    ones even at one row (SmolLM2's 30 layers from memory, 2 threads: M = 1 5.5 against 6.3
    ms, M = 4 5.8 against 12.8, M = 8 7.2 against 14.0; docs/cpu.md). Otherwise the GEMV up to
    `_LINEAR_MAX_ROWS`, past which oneDNN's blocked GEMM catches up."""
    if dtype == torch.bfloat16 and gemm.ENABLED and gemm.available():
        return "gemm"
    if _native.available() and rows <= _LINEAR_MAX_ROWS.get(dtype, 0):
        return "gemv"
    return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuPlatform(Platform):
    name = "cpu"
    api_version = API_VERSION
    device_type = "cpu"
    package = "octavo-cpu"
    supported_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    dist_backend = "gloo"
    # Prefill chunks of 1024 tokens keep a layer's activations (the gate_up output: 6 MB in
    # bf16 for SmolLM2) in the L3 where 2048 spill it; C1 (64 x 256 prompts, 128 out), same
    # process, alternating: 1024 ahead of 2048 in 3 of 3 pairs (+5.5 to +9.5%), 768 / 1536 no better.
    default_max_num_batched_tokens = 1024

    @classmethod
    def availability(cls) -> Availability:
        # always usable, but any accelerator should win "auto"
        if _native.available():
            kernels = f"native kernels ({_native.isa()})"
        else:  # say so: a broken build must not pass for a slow machine
            kernels = f"torch ops only, native kernels unavailable: {_native.IMPORT_ERROR}"
        return Availability(score=10, reason=f"{_usable_cores()} usable cores, {kernels}")

    def allocate_kv_cache(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # calloc-backed (numpy's zeros): the OS maps zero pages on first touch, so start-up
        # writes no gigabytes of zeros and resident memory grows only as the cache fills
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(shape) != 5 or shape[0] != 2:  # not the layout CpuAttention asks for
            raw = np.zeros((*shape[:-1], shape[-1] * itemsize), dtype=np.uint8)
            return torch.from_numpy(raw).view(dtype)
        # Stored head-major, [num_blocks, num_kv_heads, 2, block_size, head_dim], and handed out
        # as a view of the default shape [2, num_blocks, block_size, num_kv_heads, head_dim]
        # (the kernels take any strides). An attention unit reads one KV head of a request:
        # in this order its K (and V) rows of a block are one contiguous run (2 KiB for
        # SmolLM2) instead of one row in every num_kv_heads, which the memory system fetches
        # better (decode 64 x 320, one layer from memory: 1.17-1.42 -> 1.08-1.11 ms).
        two, num_blocks, block_size, num_kv_heads, head_dim = shape
        raw = np.zeros((num_blocks, num_kv_heads, two, block_size, head_dim * itemsize), dtype=np.uint8)
        return torch.from_numpy(raw).view(dtype).permute(2, 0, 3, 1, 4)

    def warm_up(self, forward):
        # the warm-up forwards pack every weight for the GEMM (gemm.packed, ~0.4 s for SmolLM2)
        # at start-up, not in the first request
        forward()

    def make_attention_backend(self) -> CpuAttention:
        return CpuAttention()

    def rms_norm(self, x, weight, eps, residual=None):
        # one pass per row instead of ~6 torch ops; other dtypes (and a weight whose dtype
        # differs from x's, which promotes the result) keep the default
        if (
            _native.available()
            and x.dtype in _native.SUPPORTED_DTYPES
            and weight.dtype == x.dtype
            and (residual is None or residual.dtype == x.dtype)
        ):
            return _native.rms_norm(x, weight, eps, residual)
        return super().rms_norm(x, weight, eps, residual)

    def sample(self, logits, temperatures, u):
        # one native call reads each row twice from cache (max, block sums) and scans one
        # block, where the torch path makes five passes and two temporaries of [S, V]
        if (
            _native.available()
            and logits.dtype in _native.SUPPORTED_DTYPES
            and logits.dim() == 2
            and logits.stride(-1) == 1
        ):
            return _native.sample(logits, temperatures, u)
        return super().sample(logits, temperatures, u)

    def linear(self, x, weight, bias=None):
        # the packed GEMM (bf16), the GEMV (few rows) or torch (oneDNN / MKL): linear_path
        same = weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
        path = linear_path(x.dtype, x.numel() // max(x.shape[-1], 1)) if same else None
        if path == "gemm":
            return gemm.linear(x, weight, bias)
        if path == "gemv":
            return _native.linear(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias)

    def rotary(self, q, k, positions, cos_sin_cache):
        # in place through the views of the fused qkv output: no copies, no cat
        if (
            _native.available()
            and q.dtype in _native.SUPPORTED_DTYPES
            and k.dtype == q.dtype
            and q.dim() == 3
            and k.dim() == 3
            and q.stride(-1) == 1
            and k.stride(-1) == 1
            and cos_sin_cache.dtype == torch.float32
            and cos_sin_cache.stride(-1) == 1
        ):
            return _native.rotary(q, k, positions, cos_sin_cache)
        return super().rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x):
        if _native.available() and x.dtype in _native.SUPPORTED_DTYPES:
            return _native.silu_and_mul(x)
        return super().silu_and_mul(x)

    def run_model(self, model, input_ids, positions, kv_caches, meta):
        # decode steps: every layer in one native call (decode_forward.py)
        from octavo_cpu.decode_forward import run_decode

        return run_decode(model, input_ids, positions, kv_caches, meta)

    def device_props(self) -> DeviceProps:
        total = free = 0
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            total, free = info.get("MemTotal", 0), info.get("MemAvailable", 0)
        except OSError:
            pass
        flags = _cpu_flags()
        caps = tuple(sorted(f for f in flags if f.startswith(("avx512", "avx2", "amx", "fma"))))
        return DeviceProps("cpu", total, free, _usable_cores(), caps)

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        # bf16 where the CPU computes it natively, else fp32 (fp16 matmul is slow on CPUs)
        flags = _cpu_flags()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return torch.bfloat16
        return torch.float32

    def check_and_update_config(self, config) -> None:
        threads = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(int(threads) if threads else _usable_cores())

    def init_communicator(self, world_size: int, rank: int, init_method: str):
        comm = super().init_communicator(world_size, rank, init_method)
        if world_size > 1:
            self._split_cores(world_size, rank)
        return comm

    @staticmethod
    def _split_cores(world_size: int, rank: int) -> None:
        """Give each tensor-parallel rank its own slice of the usable cores.

        Without this every rank runs one thread per core: ranks then fight for the cores,
        and a rank waiting in an all_reduce keeps its idle threads spinning on cores a peer
        needs. Workers (rank > 0) are pinned to their slice; rank 0 is the caller's process
        (scheduler, server, other threads of the application), so it only gets its thread
        count, not a changed affinity that would outlive the engine. OMP_NUM_THREADS, when
        set, is the thread count of each rank.
        """
        try:
            cores = sorted(os.sched_getaffinity(0))
        except AttributeError:  # no affinity API (not Linux): thread counts only
            cores = list(range(os.cpu_count() or 1))
        share = max(1, len(cores) // world_size)
        mine = cores[rank * share : (rank + 1) * share] if len(cores) >= world_size else cores
        if rank > 0 and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, mine)
        threads = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(int(threads) if threads else len(mine))
