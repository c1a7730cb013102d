"""octavo-rocm without an AMD GPU: discovery, availability and its reasons (score 0 here),
`--device rocm` refused with what to install, the arch facts and refusals, and that its
parts are the shared Triton GPU parts on torch's `cuda` device with RCCL's `nccl`.

The kernels themselves are octavo_triton's (triton-kernels/tests: interpreter numerics with
each AMD arch's tiles, and compiles for gfx942/gfx950/gfx1100 with LDS limits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from octavo.platform import check_platform, discover_platforms, resolve_platform
from octavo_rocm import RocmPlatform, archs
from octavo_rocm.device import RocmDevice
from octavo_rocm.platform import ON_CUDA_SWITCH
from octavo_triton import aot, tuning
from octavo_triton.platform_parts import TritonAttention, TritonModelRunner


@pytest.fixture
def no_switch(monkeypatch):
    monkeypatch.delenv(ON_CUDA_SWITCH, raising=False)


def test_platform_imports_without_gpu_or_triton():
    """Discovery imports the plugin and builds the platform everywhere: that must need neither
    triton nor a GPU, and must not initialize the GPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from octavo_rocm import RocmPlatform\n"
        "a = RocmPlatform.availability(); p = RocmPlatform()\n"
        "assert not torch.cuda.is_initialized()\n"
        "print(a.score, a.reason)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ON_CUDA_SWITCH}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    if not getattr(torch.version, "hip", None):
        assert proc.stdout.startswith("0 ") and "not a ROCm build" in proc.stdout


def test_the_platform_keeps_the_contract():
    assert check_platform(RocmPlatform) == []
    assert RocmPlatform.verified and "never run on AMD hardware" in RocmPlatform.verified
    p = RocmPlatform()
    # HIP devices are torch's "cuda" devices, RCCL is torch's "nccl" backend
    assert p.device.type == "cuda" and p.device.dist_backend == "nccl"
    assert isinstance(p.attention, TritonAttention) and RocmPlatform.runner_cls is TritonModelRunner


@pytest.mark.parametrize(
    "hip,cuda,visible,why",
    [
        (None, None, False, "is not a ROCm build (torch.version.hip is None): install a ROCm build of torch"),
        (None, "12.8", True, "is not a ROCm build"),  # octavo-cuda's GPU, not ours
        ("6.4", None, False, "no AMD GPU visible"),
    ],
)
def test_availability_says_why_not(monkeypatch, no_switch, hip, cuda, visible, why):
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    a = RocmPlatform.availability()
    assert a.score == 0 and why in a.reason, a


def test_availability_needs_tritons_amd_back_end(monkeypatch, no_switch):
    pytest.importorskip("triton")
    from triton.backends import backends

    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    a = RocmPlatform.availability()
    assert a.score == 100 and "8 AMD GPU(s), HIP 6.4" in a.reason, a
    monkeypatch.delitem(backends, "amd")
    a = RocmPlatform.availability()
    assert a.score == 0 and "has no AMD back end" in a.reason, a


def test_octavo_cuda_keeps_declining_rocm_builds(monkeypatch):
    from octavo_cuda import CudaPlatform

    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = CudaPlatform.availability()
    assert a.score == 0 and "served by octavo-rocm" in a.reason


def test_test_only_switch_needs_an_nvidia_gpu_and_loses_to_octavo_cuda(monkeypatch):
    monkeypatch.setenv(ON_CUDA_SWITCH, "1")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert RocmPlatform.availability().score == 0
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = RocmPlatform.availability()
    assert a.score == 1 and "TEST ONLY" in a.reason
    # on the same GPU octavo-cuda scores 100: --device auto never picks the switch
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    pytest.importorskip("triton")
    from octavo_cuda import CudaPlatform

    assert CudaPlatform.availability().score > a.score


def test_device_rocm_here_says_why_and_what_to_install(no_switch):
    if getattr(torch.version, "hip", None):
        pytest.skip("torch is a ROCm build here")
    info = next(i for i in discover_platforms(refresh=True) if i.name == "rocm")
    assert info.package == "octavo-rocm" and info.score == 0 and info.error is None
    with pytest.raises(RuntimeError) as e:
        resolve_platform("rocm")
    assert "device 'rocm' is installed but not usable here: octavo-rocm:" in str(e.value)
    assert "install a ROCm build of torch" in str(e.value)
    r = subprocess.run(
        [sys.executable, "-m", "octavo.entrypoints.cli", "generate", "hi", "--device", "rocm"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "not a ROCm build" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---- the GPU's facts and the arch checks ---------------------------------------------------


def _props(arch: str, **extra) -> SimpleNamespace:
    return SimpleNamespace(name="AMD Instinct MI300X", gcnArchName=arch, multi_processor_count=304, **extra)


@pytest.mark.parametrize(
    "gcn,arch,wave,lds_kib,fp8",
    [
        ("gfx942:sramecc+:xnack-", "gfx942", 64, 64, torch.float8_e4m3fnuz),
        ("gfx950", "gfx950", 64, 160, torch.float8_e4m3fn),
        ("gfx1100", "gfx1100", 32, 64, None),
        ("gfx1101", "gfx1101", 32, 64, None),  # another RDNA3 stepping: gfx1100's facts
        ("gfx90a", "gfx90a", 64, 64, None),  # not in the table: wave64 and 64 KiB by default
    ],
)
def test_facts_from_torch_with_the_arch_table_for_what_torch_lacks(monkeypatch, gcn, arch, wave, lds_kib, fp8):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _props(gcn))
    facts = RocmDevice()._facts()
    assert (facts.arch, facts.wavefront, facts.lds_bytes, facts.fp8) == (arch, wave, lds_kib << 10, fp8)
    assert f"({arch}): 304 CUs, wave{wave}, {lds_kib} KiB LDS" in facts.describe()
    # what torch reports wins over the table
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: _props(gcn, warp_size=32, shared_memory_per_block=1 << 16)
    )
    facts = RocmDevice()._facts()
    assert (facts.wavefront, facts.lds_bytes) == (32, 1 << 16)


@pytest.mark.parametrize("arch", ["gfx906", "gfx908", "gfx1030"])
def test_gpus_without_tritons_matrix_instructions_are_refused(monkeypatch, no_switch, arch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _props(arch))
    with pytest.raises(ValueError, match=f"AMD Instinct MI300X is {arch}"):
        RocmPlatform().check_and_update_config(SimpleNamespace())


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201"])
def test_supported_arches_pass(monkeypatch, no_switch, arch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _props(arch))
    RocmPlatform().check_and_update_config(SimpleNamespace())


def test_arch_table_agrees_with_the_compile_checks_and_tuning():
    """What the AOT checks hold each arch to (aot.TARGETS) is the hardware the table
    describes: the same wavefront, and an LDS limit within the arch's; each has a tuning
    entry of its own, whose dot precision the AMD back end accepts for every arch."""
    for name, arch in archs.ARCHS.items():
        target = aot.TARGETS[f"hip:{name}"]
        assert target.warp_size == arch.wavefront and target.shared_limit <= arch.lds_bytes, name
        entry = tuning.TABLE[("hip", name)]
        assert entry.dot_precision == "ieee", f"{name}: gfx950 and gfx1100 reject tf32"


def test_octavo_plugins_prints_what_was_verified_where(no_switch, monkeypatch, capsys):
    from octavo.entrypoints.cli import main as octavo_main

    def rocm_lines():
        assert octavo_main(["plugins"]) == 0
        lines = capsys.readouterr().out.splitlines()
        row = next(i for i, line in enumerate(lines) if line.startswith("rocm "))
        # under the API line and the header: each platform's row, then its verified line
        assert all(line.split()[0] == "verified:" for line in lines[3::2]), lines
        return lines[row], lines[row + 1].split()

    row, verified = rocm_lines()
    assert "octavo-rocm" in row and verified == ["verified:", *RocmPlatform.verified.split()]
    monkeypatch.setattr(RocmPlatform, "verified", "")  # a platform that states nothing is shown as such
    assert rocm_lines()[1] == ["verified:", "not", "stated", "by", "the", "plugin"]
    assert octavo_main(["plugins", "--json"]) == 0
    assert next(p for p in json.loads(capsys.readouterr().out) if p["name"] == "rocm")["verified"] == ""
