"""octavo-xpu without an Intel GPU: discovery, availability and its reasons (score 0 here),
`--device xpu` refused with what to install, XPU graphs off unless asked for, and that its
parts are the shared Triton GPU parts on torch's `xpu` device with XCCL.

The kernels are octavo_triton's (triton-kernels/tests: interpreter numerics with the Intel
entry's tiles, and the SPIR-V compiles of test_triton_xpu.py).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from octavo.platform import check_platform, discover_platforms, resolve_platform
from octavo_triton.platform_parts import TritonAttention, TritonModelRunner
from octavo_xpu import XpuPlatform
from octavo_xpu.runner import GRAPHS_SWITCH, XpuModelRunner


def test_platform_imports_without_gpu_or_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from octavo_xpu import XpuPlatform\n"
        "a = XpuPlatform.availability(); p = XpuPlatform()\n"
        "assert not torch.xpu.is_initialized()\n"
        "print(a.score, a.reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if not torch.xpu.is_available():
        assert proc.stdout.startswith("0 ") and "no Intel GPU visible" in proc.stdout


def test_the_platform_keeps_the_contract():
    assert check_platform(XpuPlatform) == []
    assert XpuPlatform.verified and "never run on Intel hardware" in XpuPlatform.verified
    p = XpuPlatform()
    assert p.device.type == "xpu" and p.device.dist_backend == "xccl"
    assert str(p.device.torch_device()) == "xpu:0"
    assert isinstance(p.attention, TritonAttention) and issubclass(XpuPlatform.runner_cls, TritonModelRunner)
    # xccl is a torch.distributed back end of this torch (unavailable without an Intel GPU)
    assert "xccl" in torch.distributed.Backend.backend_list


def test_availability_says_why_not(monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    a = XpuPlatform.availability()
    assert a.score == 0 and "torch.xpu.is_available() is False" in a.reason and "install an XPU build" in a.reason


def test_availability_needs_intels_triton(monkeypatch):
    pytest.importorskip("triton")
    from triton.backends import backends

    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: 2)
    if "intel" not in backends:  # the triton of a CPU or CUDA machine
        a = XpuPlatform.availability()
        assert a.score == 0 and "has no Intel back end (pytorch-triton-xpu)" in a.reason, a
    monkeypatch.setitem(backends, "intel", object())
    a = XpuPlatform.availability()
    assert a.score == 100 and "2 Intel GPU(s)" in a.reason, a


def test_device_xpu_here_says_why_and_what_to_install():
    if torch.xpu.is_available():
        pytest.skip("an Intel GPU is visible here")
    info = next(i for i in discover_platforms(refresh=True) if i.name == "xpu")
    assert info.package == "octavo-xpu" and info.score == 0 and info.error is None
    with pytest.raises(RuntimeError, match="device 'xpu' is installed but not usable here: octavo-xpu: .*XPU build"):
        resolve_platform("xpu")
    r = subprocess.run(
        [sys.executable, "-m", "octavo.entrypoints.cli", "generate", "hi", "--device", "xpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "no Intel GPU visible" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_xpu_graphs_only_when_asked_for(monkeypatch):
    """Off by default (never run on an Intel GPU); OCTAVO_XPU_GRAPHS=1 takes the shared runner's
    capture, through torch.xpu's graph API."""
    captured = []
    monkeypatch.setattr(TritonModelRunner, "make_graph_runner", lambda self: captured.append(self) or "graphs")
    runner = XpuModelRunner.__new__(XpuModelRunner)  # no model: only the switch is under test
    monkeypatch.delenv(GRAPHS_SWITCH, raising=False)
    assert XpuModelRunner.make_graph_runner(runner) is None and captured == []
    monkeypatch.setenv(GRAPHS_SWITCH, "1")
    assert XpuModelRunner.make_graph_runner(runner) == "graphs" and captured == [runner]
    assert hasattr(torch.xpu, "XPUGraph") and hasattr(torch.xpu, "graph_pool_handle")


def test_facts_are_what_torch_xpu_reports(monkeypatch):
    props = SimpleNamespace(
        name="Intel(R) Data Center GPU Max 1550", total_memory=128 << 30, gpu_eu_count=1024, sub_group_sizes=[16, 32]
    )
    monkeypatch.setattr(torch.xpu, "get_device_properties", lambda i: props)
    facts = XpuPlatform().device._facts()
    assert facts == "Intel(R) Data Center GPU Max 1550, 128.0 GiB, 1024 EUs, sub-groups [16, 32]"
