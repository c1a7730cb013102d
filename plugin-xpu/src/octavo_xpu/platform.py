"""The XPU platform: octavo_triton's kernels through Intel's Triton back end for attention,
the fused ops and one-row linears, oneDNN (torch's GEMM on XPU) for the other GEMMs, XCCL
for collectives; decode graphs only behind an option.

Its parts are the shared ones of every Triton GPU (octavo_triton.platform_parts), on
torch's `xpu` device: `torch.xpu` has the memory, event and graph API of `torch.cuda`, and
an XPU build of torch brings Intel's triton (`pytorch-triton-xpu`), which compiles the same
kernel source to SPIR-V. `octavo_triton.tuning` gives Intel GPUs one entry (small tiles).

| part | class | what it runs |
| --- | --- | --- |
| device | `XpuDevice` (device.py) | bf16 by default; KV budget from free memory; the GPU's facts in the log |
| attention + KV cache | `TritonAttention` | leading decodes: split-K decode kernel; rest: prefill kernel |
| linear | `TritonLinearMethod` | Triton GEMV for one row of x, oneDNN otherwise |
| fused ops | `TritonOps` | Triton RMSNorm (+ residual), rotary, SiLU-and-mul |
| communicator | `GpuCommunicator` | XCCL; each rank bound to its GPU before init |
| runner | `XpuModelRunner` (runner.py) | core's eager runner with Triton warm-up; XPU graphs with OCTAVO_XPU_GRAPHS=1 |

Nothing here imports triton or initialises the GPU at import time, nor when the platform and
its parts are built (discovery does both on every machine).
"""

from __future__ import annotations

import logging

import torch

from octavo.platform import Availability, Platform, SchedulingPolicy
from octavo_triton.platform_parts import GpuCommunicator, TritonAttention, TritonLinearMethod, TritonOps
from octavo_xpu.device import XpuDevice
from octavo_xpu.runner import XpuModelRunner

logger = logging.getLogger("octavo")

INSTALL = (
    "install an XPU build of torch (PyTorch's XPU wheels, with Intel's GPU driver and Level Zero; "
    "docs/xpu.md), which brings pytorch-triton-xpu"
)


class XpuPlatform(Platform):
    name = "xpu"
    api_version = "2.3"
    package = "octavo-xpu"
    verified = (
        "every kernel compiled to SPIR-V in CI through Intel's triton (triton-xpu 3.3, for a Data Center GPU Max); "
        "numerics checked in Triton's CPU interpreter; never run on Intel hardware"
    )
    device_cls = XpuDevice
    attention_cls = TritonAttention
    linear_cls = TritonLinearMethod
    ops_cls = TritonOps
    communicator_cls = GpuCommunicator
    runner_cls = XpuModelRunner
    # untimed on Intel GPUs: the token budget of core's default; launches return before the GPU
    # has finished, as on CUDA, so steps overlap
    scheduling = SchedulingPolicy(async_scheduling=True)

    @classmethod
    def availability(cls) -> Availability:
        xpu = getattr(torch, "xpu", None)
        if xpu is None:
            return Availability(0, f"torch {torch.__version__} has no torch.xpu: {INSTALL}")
        if not xpu.is_available():
            return Availability(
                0, f"no Intel GPU visible (torch {torch.__version__}: torch.xpu.is_available() is False): {INSTALL}"
            )
        try:
            import triton
            from triton.backends import backends
        except Exception as e:  # ImportError, or a broken install
            return Availability(0, f"triton is not importable ({type(e).__name__}: {e}): {INSTALL}")
        if "intel" not in backends:
            return Availability(0, f"triton {triton.__version__} has no Intel back end (pytorch-triton-xpu): {INSTALL}")
        return Availability(100, f"{xpu.device_count()} Intel GPU(s), triton {triton.__version__}")

    def check_and_update_config(self, config) -> None:
        # which heads, block sizes and dtypes the kernels take is TritonAttention.supports, which
        # core asks before it builds the config
        logger.info("xpu: %s", self.device._facts())
