"""The host CPU as octavo's device: its dtypes, the dtype it prefers, its usable cores."""

from __future__ import annotations

import os

import torch

from octavo.platform import Device
from octavo_cpu import _native


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (quota / period), the tightest along its
    path; None when there is none. A container given 2 CPUs on a 64-core host sees all 64 in its
    affinity mask and gets throttled once more than 2 threads run."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max "quota period" (or "max period") at each level
            parts = path.strip("/").split("/") if path.strip("/") else []
            for i in range(len(parts) + 1):
                limits.append(_quota(os.path.join(root, *parts[:i], "cpu.max")))
        elif "cpu" in controllers.split(","):  # cgroup v1: cfs_quota_us (-1: none) / cfs_period_us
            for base in (os.path.join(root, controllers), os.path.join(root, "cpu")):
                limits.append(_quota(os.path.join(base, path.lstrip("/"), "cpu.cfs_quota_us"), v1=True))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _quota(path: str, v1: bool = False) -> float | None:
    try:
        if v1:
            with open(path) as f:
                quota = int(f.read())
            with open(os.path.join(os.path.dirname(path), "cpu.cfs_period_us")) as f:
                period = int(f.read())
        else:
            with open(path) as f:
                q, p = f.read().split()
            if q == "max":
                return None
            quota, period = int(q), int(p)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores() -> int:
    """Cores this process may keep busy: its affinity mask, capped by its cgroup's CPU quota
    (rounded down: a pool of threads past the quota is throttled in bursts, which costs more
    than the fraction of a core it would add)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return cores


class CpuDevice(Device):
    type = "cpu"
    supported_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    dist_backend = "gloo"

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        return preferred_dtype(_native.isa())


def preferred_dtype(isa: str) -> torch.dtype:
    """The dtype that serves fastest at an ISA level (docs/benchmarks.md, one table per level).
    With the native kernels bf16 weights are half the bytes of fp32 at fp32's arithmetic (or
    at the BF16 dot products' rate), so bf16 at every level that has vector kernels; fp32 on
    the portable path and without the extension, where torch's bf16 matmul would run."""
    return torch.float32 if isa in ("generic", "none") else torch.bfloat16
