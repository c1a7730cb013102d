"""octavo-cpu's platform declaration and its small parts: the contract, the device's dtype, the
communicator's core split."""

from __future__ import annotations

import os

import pytest
import torch

from octavo.platform import check_platform
from octavo_cpu import device
from octavo_cpu.communicator import _split_cores
from octavo_cpu.platform import CpuPlatform


def test_the_platform_keeps_the_contract():
    assert check_platform(CpuPlatform) == []
    p = CpuPlatform()
    assert p.device.torch_device() == torch.device("cpu") and p.device.dist_backend == "gloo"
    assert p.availability().score > 0


@pytest.mark.parametrize(
    "isa, want",
    [
        ("amx", torch.bfloat16),
        ("avx512_bf16", torch.bfloat16),
        ("avx512", torch.bfloat16),
        ("avx2", torch.bfloat16),
        ("neon", torch.bfloat16),
        ("generic", torch.float32),
        ("none", torch.float32),
    ],
)
def test_default_dtype_is_the_fastest_at_the_running_level(monkeypatch, isa, want):
    """bf16 wherever vector kernels widen it in registers (docs/benchmarks.md: bf16 ahead of
    fp32 at every such level); fp32 on the portable path and without the extension."""
    monkeypatch.setattr(device._native, "isa", lambda: isa)
    for checkpoint in (torch.float32, torch.bfloat16, torch.float16, None):
        assert device.CpuDevice().default_dtype(checkpoint) == want
    assert f"default dtype {str(want).removeprefix('torch.')}" in CpuPlatform.availability().reason  # `octavo plugins`


def _cgroup_tree(tmp_path, v2: dict[str, str], self_line: str):
    for rel, text in v2.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    proc = tmp_path / "self_cgroup"
    proc.write_text(self_line)
    return str(tmp_path), str(proc)


def test_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    """cgroup v2: the tightest cpu.max on the path counts ("max": none); v1: cfs quota/period."""
    root, proc = _cgroup_tree(
        tmp_path,
        {"cpu.max": "max 100000\n", "a/cpu.max": "350000 100000\n", "a/b/cpu.max": "max 100000\n"},
        "0::/a/b\n",
    )
    assert device.cgroup_cpu_limit(root, proc) == 3.5
    root, proc = _cgroup_tree(tmp_path / "none", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert device.cgroup_cpu_limit(root, proc) is None
    root, proc = _cgroup_tree(
        tmp_path / "v1",
        {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
        "12:cpu,cpuacct:/docker/x\n",
    )
    assert device.cgroup_cpu_limit(root, proc) == 1.5
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: 1.5)
    assert device.usable_cores() == 1
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: 1000.0)
    assert device.usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs the affinity API")
def test_each_rank_gets_its_share_of_the_cores(monkeypatch):
    """Rank 0 (the caller's process) keeps its affinity and runs its share of threads."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.sched_getaffinity(0)
    saved = torch.get_num_threads()
    try:
        _split_cores(2, 0)
        assert torch.get_num_threads() == max(1, len(cores) // 2)
        assert os.sched_getaffinity(0) == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        _split_cores(2, 0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)
