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
    "flags, want",
    [({"avx512_bf16", "avx2"}, torch.bfloat16), ({"amx_bf16"}, torch.bfloat16), ({"avx2", "avx512f"}, torch.float32)],
)
def test_default_dtype_is_bf16_only_where_the_cpu_computes_it(monkeypatch, flags, want):
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    for checkpoint in (torch.float32, torch.bfloat16, torch.float16, None):
        assert device.CpuDevice().default_dtype(checkpoint) == want


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
