"""The tuning table's lookup: which entry a device takes, the fallbacks, the cache, refusals.

No GPU is needed: torch's device queries are replaced by fakes where a GPU's answers matter.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from octavo_triton import tuning
from octavo_triton.tuning import DEFAULT, TABLE, UnsupportedTarget, entry, for_device, target_of

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


@pytest.fixture(autouse=True)
def fresh_cache():
    for_device.cache_clear()
    yield
    for_device.cache_clear()


@pytest.mark.parametrize(
    "target,takes",
    [
        # a listed target takes its own entry
        (("cuda", 80), ("cuda", 80)),
        (("cuda", 90), ("cuda", 90)),
        (("hip", "gfx950"), ("hip", "gfx950")),
        # CUDA: the newest listed capability at or below the GPU's
        (("cuda", 86), ("cuda", 80)),
        (("cuda", 89), ("cuda", 80)),
        (("cuda", 100), ("cuda", 90)),
        (("cuda", 120), ("cuda", 90)),
        # AMD: another stepping of a listed major.minor
        (("hip", "gfx940"), ("hip", "gfx942")),
        (("hip", "gfx1101"), ("hip", "gfx1100")),
        # Intel: one entry for every GPU
        (("xpu", None), ("xpu", None)),
        (("xpu", "pvc"), ("xpu", None)),
    ],
)
def test_entry_falls_back_to_the_family(target, takes):
    assert entry(*target) is TABLE[takes]


@pytest.mark.parametrize("target", [("cuda", 75), ("hip", "gfx90a"), ("hip", "gfx1200"), ("metal", "m3")])
def test_entry_without_a_family_is_the_default(target):
    assert entry(*target) is DEFAULT


@pytest.mark.parametrize("name", sorted(e.target for e in [DEFAULT, *TABLE.values()]))
def test_every_entry_has_tiles_for_every_supported_input(name):
    """tl.arange and tl.dot need power-of-two tiles of at least 16 rows and columns."""
    tuned = next(e for e in [DEFAULT, *TABLE.values()] if e.target == name)
    for head_dim in SUPPORTED_HEAD_DIMS:
        for itemsize in (2, 4):
            for rules in (tuned.decode, tuned.prefill):
                tiles = tuned.tiles(rules, head_dim, itemsize)
                assert tiles.tile_n >= 16 and tiles.tile_n & (tiles.tile_n - 1) == 0, tiles
                assert tiles.num_warps & (tiles.num_warps - 1) == 0 and tiles.num_stages >= 1, tiles
            block_m = tuned.tiles(tuned.prefill, head_dim, itemsize).block_m
            assert block_m >= 16 and block_m & (block_m - 1) == 0, name


@pytest.mark.parametrize("name", ["hip:gfx950", "hip:gfx1100"])
def test_amd_targets_without_tf32_do_not_ask_for_it(name):
    """Their back end accepts only ieee / bf16x3 / bf16x6 (a tf32 kernel does not compile there)."""
    assert next(e for e in TABLE.values() if e.target == name).dot_precision in ("ieee", "bf16x3", "bf16x6")


def _fake_gpu(monkeypatch, *, hip=None, capability=(9, 0), arch_name="gfx942:sramecc+:xnack-"):
    calls = []

    def get_device_capability(device=None):
        calls.append(device)
        return capability

    def get_device_properties(device=None):
        calls.append(device)
        return types.SimpleNamespace(gcnArchName=arch_name, multi_processor_count=304)

    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", get_device_properties)
    return calls


def test_target_of_a_cuda_device(monkeypatch):
    _fake_gpu(monkeypatch, capability=(8, 6))
    assert target_of(torch.device("cuda", 0)) == ("cuda", 86)


def test_target_of_a_rocm_device_drops_the_feature_flags(monkeypatch):
    _fake_gpu(monkeypatch, hip="6.4.0", arch_name="gfx950:sramecc+:xnack-")
    assert target_of(torch.device("cuda", 0)) == ("hip", "gfx950")


def test_target_of_xpu_cpu_and_others():
    assert target_of(torch.device("xpu", 0)) == ("xpu", None)
    assert target_of(torch.device("cpu")) == tuning.INTERPRETER_TARGET
    with pytest.raises(UnsupportedTarget, match="'meta'"):
        target_of(torch.device("meta"))


def test_for_device_asks_torch_once_per_device(monkeypatch):
    calls = _fake_gpu(monkeypatch, hip="6.4.0")
    dev0, dev1 = torch.device("cuda", 0), torch.device("cuda", 1)
    for _ in range(5):
        assert for_device(dev0) is TABLE[("hip", "gfx942")]
    assert len(calls) == 1
    for_device(dev1)
    assert len(calls) == 2


@pytest.fixture
def interpreter_unsupported(monkeypatch):
    """The CPU's (interpreter's) target marked unsupported, with a reason."""
    broken = tuning.Tuning(**{**vars(TABLE[tuning.INTERPRETER_TARGET]), "unsupported": "reason X"})
    monkeypatch.setitem(TABLE, tuning.INTERPRETER_TARGET, broken)
    return broken


def test_an_unsupported_target_is_refused_with_its_reason(interpreter_unsupported):
    with pytest.raises(UnsupportedTarget, match=r"do not support cuda:90: reason X"):
        for_device(torch.device("cpu"))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the launchers import triton")
def test_launchers_refuse_an_unsupported_target_before_launching(interpreter_unsupported):
    from octavo_triton.activation import silu_and_mul
    from octavo_triton.rms_norm import rms_norm

    x = torch.ones(2, 64)
    with pytest.raises(UnsupportedTarget, match="reason X"):
        rms_norm(x, torch.ones(64), 1e-6)
    with pytest.raises(UnsupportedTarget, match="reason X"):
        silu_and_mul(x)


@pytest.mark.parametrize("value,target", [("hip:gfx942", ("hip", "gfx942")), ("cuda:80", ("cuda", 80))])
def test_the_test_only_override_makes_every_device_take_that_targets_entry(monkeypatch, value, target):
    """How the lent NVIDIA GPU runs an AMD arch's tiles (plugin-rocm/scripts/rocm_on_nvidia_gpu.sh)."""
    calls = _fake_gpu(monkeypatch, capability=(9, 0))
    monkeypatch.setenv(tuning.TARGET_OVERRIDE, value)
    assert for_device(torch.device("cuda", 0)) is TABLE[target]
    assert for_device(torch.device("cpu")) is TABLE[target]
    assert calls == []  # the GPU is not asked what it is


# ---- programmatic dependent launch (octavo_triton.dependent_launch) -------------------------


def test_dependent_launch_only_where_the_hardware_has_it():
    """PDL (griddepcontrol) exists from sm_90 on: no AMD, Intel, sm_80 or default entry may ask for it."""
    for (backend, arch), tuned in TABLE.items():
        assert tuned.dependent_launch == (backend == "cuda" and arch >= 90), tuned.target
    assert not DEFAULT.dependent_launch


def test_dependent_launch_options(monkeypatch):
    """The launch keywords: on for an entry that asks for it, off where it does not, off with
    OCTAVO_TRITON_PDL=0, and off under the interpreter (which has no launches to overlap)."""
    pytest.importorskip("triton")
    from octavo_triton import dependent_launch

    monkeypatch.delenv(dependent_launch.ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    off = {"PDL": False}
    assert dependent_launch.launch_options(entry("cuda", 80)) == off
    assert dependent_launch.launch_options(entry("hip", "gfx942")) == off
    if dependent_launch._triton_has_gdc():
        assert dependent_launch.launch_options(entry("cuda", 90)) == {"PDL": True, "launch_pdl": True}
    else:
        assert dependent_launch.launch_options(entry("cuda", 90)) == off
    monkeypatch.setenv(dependent_launch.ENV, "0")
    assert dependent_launch.launch_options(entry("cuda", 90)) == off
    monkeypatch.delenv(dependent_launch.ENV)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dependent_launch.launch_options(entry("cuda", 90)) == off
