"""The host CPU as octavo's device: its dtypes, the dtype it prefers, its usable cores."""

from __future__ import annotations

import os

import torch

from octavo.platform import Device


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuDevice(Device):
    type = "cpu"
    supported_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    dist_backend = "gloo"

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        # bf16 where the CPU computes it natively, else fp32 (fp16 matmul is slow on CPUs)
        flags = cpu_flags()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return torch.bfloat16
        return torch.float32
