"""The ROCm platform: octavo_triton's kernels (tuned per gfx arch) for attention, the fused
ops and one-row linears, hipBLASLt (torch's GEMM under HIP) for the other GEMMs, RCCL for
collectives, HIP graphs for decode.

Its parts are the shared ones of every Triton GPU (octavo_triton.platform_parts): under a
ROCm build of torch, HIP devices are torch's `cuda` devices, `nccl` is RCCL and the
`torch.cuda` graph API captures HIP graphs, so the code paths are octavo-cuda's; Triton
compiles the kernels through its AMD back end, and `octavo_triton.tuning` picks the tiles of
the GPU's arch (gfx942, gfx950, gfx1100; others of a known family take its entry).

| part | class | what it runs |
| --- | --- | --- |
| device | `RocmDevice` (device.py) | bf16 by default; KV budget from free memory; the GPU's facts (archs.py) |
| attention + KV cache | `TritonAttention` | leading decodes: split-K decode kernel; rest: prefill kernel |
| linear | `TritonLinearMethod` | Triton GEMV for one row of x, hipBLASLt otherwise |
| fused ops | `TritonOps` | Triton RMSNorm (+ residual), rotary, SiLU-and-mul |
| communicator | `GpuCommunicator` | RCCL; each rank bound to its GPU before init |
| runner | `TritonModelRunner` | core's eager runner; warm-up shapes at start, decode steps as HIP graphs |

TEST ONLY: `OCTAVO_ROCM_ON_CUDA=1` makes this platform available on a CUDA build of torch
with an NVIDIA GPU, at score 1 (below octavo-cuda's, so `--device auto` never takes it), so
that the conformance suite and a generate run through octavo-rocm's code on a lent NVIDIA GPU
(docs/rocm.md). It is not a way to serve: nothing AMD-specific runs there.

Nothing here imports triton or initialises the GPU at import time, nor when the platform and
its parts are built (discovery does both on every machine).
"""

from __future__ import annotations

import logging
import os

import torch

from octavo.platform import Availability, Platform, SchedulingPolicy
from octavo_rocm import archs
from octavo_rocm.device import RocmDevice
from octavo_triton.platform_parts import (
    GpuCommunicator,
    TritonAttention,
    TritonLinearMethod,
    TritonModelRunner,
    TritonOps,
)

logger = logging.getLogger("octavo")

#: the test-only switch (module docstring)
ON_CUDA_SWITCH = "OCTAVO_ROCM_ON_CUDA"
INSTALL = (
    "install a ROCm build of torch (PyTorch's ROCm wheels or AMD's ROCm containers; docs/rocm.md), "
    "which brings triton with its AMD back end"
)


def _on_cuda() -> bool:
    return os.environ.get(ON_CUDA_SWITCH) == "1"


class RocmPlatform(Platform):
    name = "rocm"
    api_version = "2.3"
    package = "octavo-rocm"
    verified = (
        "kernels compiled for gfx942/gfx950/gfx1100 in CI (LDS checked against each arch's limit), their "
        "numerics checked in Triton's CPU interpreter with each arch's tiles; never run on AMD hardware"
    )
    device_cls = RocmDevice
    attention_cls = TritonAttention
    linear_cls = TritonLinearMethod
    ops_cls = TritonOps
    communicator_cls = GpuCommunicator
    runner_cls = TritonModelRunner
    # octavo-cuda's policy (measured on NVIDIA, never timed on AMD): an MI300's GEMMs want
    # big steps as an H100's do, and launches return before the GPU has finished
    scheduling = SchedulingPolicy(default_max_num_batched_tokens=8192, async_scheduling=True)

    @classmethod
    def availability(cls) -> Availability:
        if _on_cuda():
            if torch.version.cuda is None or not torch.cuda.is_available():
                return Availability(0, f"{ON_CUDA_SWITCH}=1 needs a CUDA build of torch and an NVIDIA GPU")
            return Availability(
                1, f"TEST ONLY ({ON_CUDA_SWITCH}=1): octavo-rocm's code on an NVIDIA GPU, nothing AMD-specific runs"
            )
        if not getattr(torch.version, "hip", None):
            return Availability(
                0, f"torch {torch.__version__} is not a ROCm build (torch.version.hip is None): {INSTALL}"
            )
        if not torch.cuda.is_available():
            return Availability(0, "no AMD GPU visible (torch.cuda.is_available() is False under HIP)")
        try:
            import triton
            from triton.backends import backends
        except Exception as e:  # ImportError, or a broken install
            return Availability(0, f"triton is not importable ({type(e).__name__}: {e}): {INSTALL}")
        if "amd" not in backends:
            return Availability(0, f"triton {triton.__version__} has no AMD back end: {INSTALL}")
        return Availability(
            100, f"{torch.cuda.device_count()} AMD GPU(s), HIP {torch.version.hip}, triton {triton.__version__}"
        )

    def check_and_update_config(self, config) -> None:
        # which heads, block sizes and dtypes the kernels take is TritonAttention.supports, which
        # core asks before it builds the config
        if _on_cuda():
            logger.warning("%s=1: octavo-rocm runs on %s (TEST ONLY)", ON_CUDA_SWITCH, torch.cuda.get_device_name())
            return
        facts = self.device._facts()
        if not archs.supported(facts.arch):
            raise ValueError(
                f"the rocm platform's Triton kernels need an AMD GPU with matrix instructions Triton targets "
                f"({', '.join(archs.TRITON_FAMILIES)}...); {facts.name} is {facts.arch or 'of an unknown arch'}"
            )
        logger.info("rocm: %s", facts.describe())
