"""The platforms' declarations: the contract, what "tpu" says on a host without TPUs, and the
test-only "tpu-cpu" that device="auto" does not take over a real device."""

from __future__ import annotations

from octavo.platform import check_platform, discover_platforms, resolve_platform
from octavo_tpu.platform import CPU_SWITCH, TpuCpuPlatform, TpuPlatform


def test_platforms_keep_the_contract():
    assert check_platform(TpuPlatform) == []
    assert check_platform(TpuCpuPlatform) == []
    assert TpuPlatform.spmd and TpuPlatform.scheduling.static_shapes is not None


def test_tpu_says_what_is_missing_here():
    info = {i.name: i for i in discover_platforms()}["tpu"]
    assert not info.usable
    assert "no TPU chips" in info.reason and CPU_SWITCH in info.reason, info.reason


def test_tpu_cpu_only_when_asked_for_and_never_before_a_real_device(monkeypatch):
    monkeypatch.delenv(CPU_SWITCH)
    assert TpuCpuPlatform.availability().score == 0
    monkeypatch.setenv(CPU_SWITCH, "1")
    assert TpuCpuPlatform.availability().score == 1  # the lowest usable score
    assert resolve_platform("auto").name != "tpu-cpu"
