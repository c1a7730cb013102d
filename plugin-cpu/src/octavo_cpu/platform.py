"""The CPU platform: native C++ kernels (csrc/, see `_native`) where they apply, torch ops elsewhere.

Its parts, one module each:

| part | class | what it runs |
| --- | --- | --- |
| device | `CpuDevice` (device.py) | the running ISA level's fastest dtype; cores from affinity and cgroup quota |
| attention + KV cache | `CpuAttention` (attention.py) | native paged attention and KV writes over a head-major cache |
| linear | `CpuLinearMethod` (linear.py) | bf16 at every ISA level: GEMM on weights packed at load; fp32: GEMV, torch |
| fused ops | `CpuOps` (ops.py) | native RMSNorm (fused residual add), rotary (in place), SiLU-and-mul, sampling |
| communicator | `CpuCommunicator` (communicator.py) | gloo; each tensor-parallel rank on its own cores |
| runner | `CpuModelRunner` (runner.py) | core's eager runner; decode steps in one native call (decode_forward.py) |
"""

from __future__ import annotations

import logging
import os

import torch

from octavo import openmp
from octavo.platform import Availability, Platform, SchedulingPolicy
from octavo_cpu import _native
from octavo_cpu.attention import CpuAttention
from octavo_cpu.communicator import CpuCommunicator
from octavo_cpu.device import CpuDevice, preferred_dtype, usable_cores
from octavo_cpu.linear import CpuLinearMethod
from octavo_cpu.ops import CpuOps
from octavo_cpu.runner import CpuModelRunner

logger = logging.getLogger(__name__)


class CpuPlatform(Platform):
    name = "cpu"
    api_version = "2.3"
    package = "octavo-cpu"
    device_cls = CpuDevice
    attention_cls = CpuAttention
    linear_cls = CpuLinearMethod
    ops_cls = CpuOps
    communicator_cls = CpuCommunicator
    runner_cls = CpuModelRunner
    # Prefill chunks of 1024 tokens keep a layer's activations (the gate_up output: 6 MB in
    # bf16 for SmolLM2) in the L3 where 2048 spill it; C1 (64 x 256 prompts, 128 out), same
    # process, alternating: 1024 ahead of 2048 in 3 of 3 pairs (+5.5 to +9.5%), 768 / 1536 no better.
    scheduling = SchedulingPolicy(default_max_num_batched_tokens=1024)

    @classmethod
    def availability(cls) -> Availability:
        # always usable, but any accelerator should win "auto"
        if _native.available():
            kernels = f"native kernels ({_native.isa()}; levels here: {', '.join(_native.supported_isas())})"
        else:  # say so: a broken build must not pass for a slow machine
            kernels = f"torch ops only, native kernels unavailable: {_native.IMPORT_ERROR}"
        dtype = str(preferred_dtype(_native.isa())).removeprefix("torch.")
        return Availability(score=10, reason=f"{usable_cores()} usable cores, {kernels}, default dtype {dtype}")

    def check_and_update_config(self, config) -> None:
        threads = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(int(threads) if threads else usable_cores())
        if openmp.loaded_too_late and torch.get_num_threads() > 1:
            logger.warning(
                "torch was imported before octavo, so its OpenMP threads keep libgomp's long spin, which "
                "stalls them when other processes share the cores: import octavo first, or export "
                "GOMP_SPINCOUNT=%s before starting Python (docs/cpu.md, 'Threads on a busy machine')",
                openmp.SPIN_COUNT,
            )
