"""The CUDA platform: Triton kernels for attention and the fused ops, cuBLAS (torch) for
GEMMs, NCCL for collectives.

Nothing here imports triton or initialises CUDA at import time: discovery imports
this module on every machine, and a process that has initialised CUDA can no longer
fork workers. `availability()` uses only calls that do not create a CUDA context.
"""

from __future__ import annotations

import os

import torch

from octavo.platform import API_VERSION, Availability, DeviceProps, Platform
from octavo_cuda.attention import CudaAttention

#: bf16 tensor cores and every Triton feature the kernels use arrive with Ampere
MIN_CAPABILITY = (8, 0)


class CudaPlatform(Platform):
    name = "cuda"
    api_version = API_VERSION
    device_type = "cuda"
    package = "octavo-cuda"
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    dist_backend = "nccl"
    # G3 on an H100 (8B, 64 x 1024-token prompts): 5.01 s with 2048-token steps, 3.17 s with
    # 8192 (docs/benchmarks.md): 2048-row GEMMs leave the tensor cores under-used
    default_max_num_batched_tokens = 8192
    async_scheduling = True

    @classmethod
    def availability(cls) -> Availability:
        if getattr(torch.version, "hip", None):
            return Availability(0, "torch is a ROCm build; AMD GPUs are served by octavo-rocm")
        if torch.version.cuda is None:
            return Availability(0, f"torch {torch.__version__} was built without CUDA; install a CUDA build of torch")
        if not torch.cuda.is_available():
            return Availability(0, "no CUDA GPU visible (torch.cuda.is_available() is False)")
        try:
            import triton
        except Exception as e:  # ImportError, or a broken install
            return Availability(0, f"triton is not importable ({type(e).__name__}: {e}); pip install 'triton>=3.0'")
        return Availability(100, f"{torch.cuda.device_count()} CUDA device(s), triton {triton.__version__}")

    def make_attention_backend(self) -> CudaAttention:
        return CudaAttention()

    def device_props(self) -> DeviceProps:
        dev = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        cc = (props.major, props.minor)
        caps = [f"sm_{props.major}{props.minor}", "triton", "nccl"]
        caps += ["bf16"] if cc >= (8, 0) else []
        caps += ["fp8"] if cc >= (8, 9) else []
        caps += ["tma", "wgmma"] if cc >= (9, 0) else []
        return DeviceProps(props.name, total, free, props.multi_processor_count, tuple(caps))

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        """Keep a half-precision checkpoint's dtype; float32 or unknown -> bfloat16 (every
        GPU these kernels accept, MIN_CAPABILITY and up, computes bf16 natively)."""
        if model_dtype in (torch.bfloat16, torch.float16):
            return model_dtype
        return torch.bfloat16

    def check_and_update_config(self, config) -> None:
        cc = torch.cuda.get_device_capability()
        if cc < MIN_CAPABILITY:
            raise ValueError(
                f"the cuda platform's Triton kernels need compute capability >= "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}; {torch.cuda.get_device_name()} has {cc[0]}.{cc[1]}"
            )
        hf = config.model.hf_config
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        why = self.attention.check_config(
            head_dim=head_dim, block_size=config.cache.block_size, dtype=config.model.dtype
        )
        if why:
            raise ValueError(f"the cuda platform cannot serve {config.model.model}: {why}")

    # ---- fused ops and the decode GEMV (Triton); other linears are cuBLAS (torch) -------
    #: most rows of x that take the Triton GEMV (gemv_bench.py: it streams weights at
    #: 2.6-3.1 TB/s where cuBLAS reaches 2.0-2.9 for one row)
    gemv_max_rows = 1

    def linear(self, x, weight, bias=None):
        if (
            x.numel() <= self.gemv_max_rows * x.shape[-1]
            and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype)
        ):
            from octavo_triton.gemv import gemv

            return gemv(x, weight, bias)
        return super().linear(x, weight, bias)

    def rms_norm(self, x, weight, eps, residual=None):
        from octavo_triton.rms_norm import rms_norm

        return rms_norm(x, weight, eps, residual)

    def rotary(self, q, k, positions, cos_sin_cache):
        from octavo_triton.rotary import rotary

        return rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x):
        from octavo_triton.activation import silu_and_mul

        return silu_and_mul(x)

    # ---- memory and collectives ---------------------------------------------------
    #: peak bytes allocated by the profiling forward above what was allocated before it
    #: (None until `profile_memory` ran; the budget then falls back to an estimate)
    profiled_activation_bytes: int | None = None

    def profile_memory(self, forward) -> None:
        """Run the runner's profiling forward and keep torch's peak allocation over it."""
        from octavo_cuda.memory import profile_peak_bytes

        self.profiled_activation_bytes = profile_peak_bytes(forward, torch.device("cuda", torch.cuda.current_device()))

    def kv_cache_budget_bytes(self, config, model_bytes: int) -> int:
        """See octavo_cuda.memory for the formula; model_bytes is already in the
        device's used memory once the weights are loaded, so it is not subtracted again."""
        from octavo_cuda.memory import kv_cache_budget_bytes

        return kv_cache_budget_bytes(
            config, torch.device("cuda", torch.cuda.current_device()), self.profiled_activation_bytes
        )

    def warm_up(self, forward) -> None:
        """Triton compiles each kernel variant on first use (seconds each): do it now."""
        forward()

    # ---- CUDA graphs (decode steps; see octavo.graph_runner) ------------------------------
    def graph_capture_supported(self) -> bool:
        return True

    def capture_graph(self, fn):
        """torch.cuda.CUDAGraph over one memory pool shared by all of this platform's graphs
        (captured largest first, the smaller ones reuse its blocks)."""
        if getattr(self, "_graph_pool", None) is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            out = fn()
        torch.cuda.synchronize()
        if not hasattr(self, "_graphs"):
            self._graphs = []
        self._graphs.append(graph)  # keep them alive with the platform
        return out, graph.replay

    def init_communicator(self, world_size: int, rank: int, init_method: str):
        # NCCL binds a communicator to the current device: pick ours before init
        if world_size > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
            torch.cuda.set_device(local_rank)
        return super().init_communicator(world_size, rank, init_method)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def copy_to_host(self, tensors):
        """Copies into pinned buffers queued on the stream, then an event: waiting on the event
        does not wait for the step queued behind them (as `.cpu()` would, syncing the stream)."""
        out = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
        done = torch.cuda.Event()
        done.record()

        def wait():
            done.synchronize()
            return out

        return wait
