"""The CUDA platform: octavo_triton's kernels for attention, the fused ops and one-row
linears, cuBLAS (torch) for the other GEMMs, NCCL for collectives, CUDA graphs for decode.

Its parts are the shared ones of every Triton GPU (octavo_triton.platform_parts), on torch's
`cuda` device with NCCL: this module declares them, gates availability and checks the GPU.

| part | class | what it runs |
| --- | --- | --- |
| device | `TritonGpuDevice` | bf16 by default; KV budget from free memory and a profiled peak |
| attention + KV cache | `TritonAttention` | leading decodes: split-K decode kernel; rest: prefill kernel |
| linear | `TritonLinearMethod` | Triton GEMV for one row of x, cuBLAS otherwise |
| fused ops | `TritonOps` | Triton RMSNorm (+ residual), rotary, SiLU-and-mul |
| communicator | `GpuCommunicator` | NCCL; each rank bound to its GPU before init |
| runner | `TritonModelRunner` | core's eager runner; warm-up shapes at start, decode steps as CUDA graphs |

Nothing here imports triton or initialises CUDA at import time, nor when the platform and
its parts are built: discovery does both on every machine, and a process that has
initialised CUDA can no longer fork workers. `availability()` uses only calls that do not
create a CUDA context.
"""

from __future__ import annotations

import torch

from octavo.platform import Availability, Platform, SchedulingPolicy
from octavo_triton.platform_parts import (
    GpuCommunicator,
    TritonAttention,
    TritonGpuDevice,
    TritonLinearMethod,
    TritonModelRunner,
    TritonOps,
)

#: bf16 tensor cores and every Triton feature the kernels use arrive with Ampere
MIN_CAPABILITY = (8, 0)


class CudaPlatform(Platform):
    name = "cuda"
    api_version = "2.3"
    package = "octavo-cuda"
    verified = (
        "run on NVIDIA H100 and H200 (kernel tests, conformance suite, CUDA graphs, benchmarks: docs/cuda.md); "
        "kernels compiled for sm_80 in CI, never run on an A100"
    )
    device_cls = TritonGpuDevice
    attention_cls = TritonAttention
    linear_cls = TritonLinearMethod
    ops_cls = TritonOps
    communicator_cls = GpuCommunicator
    runner_cls = TritonModelRunner
    scheduling = SchedulingPolicy(
        # G3 on an H100 (8B, 64 x 1024-token prompts): 5.01 s with 2048-token steps, 3.17 s with
        # 8192 (docs/benchmarks.md): 2048-row GEMMs leave the tensor cores under-used
        default_max_num_batched_tokens=8192,
        # launching returns before the GPU has finished, so step N+1 is scheduled and queued
        # while step N runs (G2 on an H100: 5.70 ms a token against 6.08 without, docs/cuda.md)
        async_scheduling=True,
    )

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

    def check_and_update_config(self, config) -> None:
        # which heads, block sizes and dtypes the kernels take is TritonAttention.supports, which
        # core asks before it builds the config
        cc = torch.cuda.get_device_capability()
        if cc < MIN_CAPABILITY:
            raise ValueError(
                f"the cuda platform's Triton kernels need compute capability >= "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}; {torch.cuda.get_device_name()} has {cc[0]}.{cc[1]}"
            )
