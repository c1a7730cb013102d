"""The platforms the repository ships pass the conformance suite, and the suite's entry points behave.

The full runs go through a subprocess from an unrelated directory, exactly as a vendor types it
(`pytest --octavo-platform NAME`): for octavo-cpu, and for the kit's reference platform, which
the kit does not register (it is far too slow to serve with) and these tests install as the
fixture plugin "reference". The quicker checks call `run_check` in-process against it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest
import torch
from fixtures.plugins import installed_plugins

from octavo.platform import AttentionBackend, Device, FusedOps, LinearMethod, Platform, api_compatible
from octavo_plugin_kit.cli import run_check
from octavo_plugin_kit.pytest_plugin import _source

# The suite's tensors are small: extra OpenMP threads only spin-wait, which on a busy
# 2-core machine makes the run 5-10x slower.
SMALL_SHAPES_ENV = {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
KERNELS = (
    "platform",
    "kv_cache",
    "write_kv",
    "attend",
    "attend_latent",
    "linear",
    "rms_norm",
    "rotary",
    "silu_and_mul",
    "sample",
    "communicator",
    "generate",
)
# platform -> the package its header names
FULL_RUNS = {"reference": "octavo-plugin-kit", "cpu": "octavo-cpu"}


@pytest.fixture(scope="module")
def reference_installed(tmp_path_factory):
    """The kit's ReferencePlatform installed as device "reference"; yields the site directory."""
    dists = {"octavo-fixture-reference": ("reference", "octavo_fixture_reference")}
    with installed_plugins(tmp_path_factory.mktemp("site"), dists) as site:
        yield site


@pytest.mark.parametrize("name", list(FULL_RUNS))
def test_passes_the_whole_suite_from_any_directory(tmp_path, reference_installed, name):
    # an unrelated project with its own failing test: the suite must run instead of it
    (tmp_path / "test_unrelated.py").write_text("def test_not_the_suite():\n    assert False\n")
    pythonpath = os.pathsep.join(filter(None, [str(reference_installed), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--octavo-platform", name, "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **SMALL_SHAPES_ENV, "PYTHONPATH": pythonpath},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "test_not_the_suite" not in out
    passed = int(re.search(r"^(\d+) passed.* in [\d.]+s", out, re.M).group(1))  # pytest's last line
    assert passed >= 100, f"only {passed} conformance tests ran:\n{out[-3000:]}"
    header = re.search(rf"octavo conformance: platform '{name}' \({FULL_RUNS[name]}, API (\S+)\)", out)
    assert header and api_compatible(header[1]), out[-3000:]
    for kernel in KERNELS:
        assert re.search(rf"^{kernel}\s+passed", out, re.M), f"{kernel} missing from the table:\n{out[-3000:]}"


@pytest.fixture
def one_thread():
    """In-process suite runs with one torch thread (see SMALL_SHAPES_ENV), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_check_forwards_pytest_arguments(capsys, reference_installed, one_thread):
    assert run_check("reference", ["-q", "-s", "-k", "test_linear"]) == 0
    out = capsys.readouterr().out
    # the reference platform runs its own linear method, so the source is the platform
    assert re.search(r"^linear\s+passed\s+platform\s+9 passed", out, re.M), out
    assert not re.search(r"^attend", out, re.M), "-k must select only the linear tests"


def test_run_check_exhaustive_runs_every_combination(capsys, reference_installed, one_thread):
    assert run_check("reference", ["-q", "-s", "-k", "test_write_kv_default_layout", "--octavo-exhaustive"]) == 0
    assert re.search(r"^write_kv\s+passed\s+27 passed", capsys.readouterr().out, re.M)


def test_unknown_platform_is_one_usage_error_naming_what_is_installed(capsys, reference_installed):
    assert run_check("no_such_device", ["-q", "-s"]) == pytest.ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "cannot use platform 'no_such_device'" in err
    assert "installed:" in err and "cpu (octavo-cpu" in err and "reference (octavo-fixture-reference" in err
    assert "pip install octavo-no_such_device" in err


def test_the_suite_skips_cleanly_without_a_platform(capsys):
    """pytest pointed at the suite without --octavo-platform: every test skips, none errors."""
    from octavo_plugin_kit.pytest_plugin import SUITE_DIR

    assert pytest.main([SUITE_DIR, "-q", "-s", "-rs", "-k", "silu or identity"]) == 0
    out = capsys.readouterr().out
    assert "passed" not in out and "choose a platform with --octavo-platform NAME" in out


def _run_registered(platform_cls: type[Platform], args: list[str]) -> int:
    """run_check against a platform registered by hand for the run, under its name."""
    from octavo.platform import get_plugin_manager, hookimpl
    from octavo.platform.discovery import register_plugin

    plugin = types.ModuleType(f"{platform_cls.name}_plugin")
    plugin.octavo_platforms = hookimpl(lambda: [platform_cls])
    register_plugin(plugin, name=platform_cls.name)
    try:
        return run_check(platform_cls.name, args)
    finally:
        get_plugin_manager(refresh=True)


def test_table_reports_skips_with_reasons_and_kernels_not_provided(capsys, one_thread):
    """A platform that supports less: one dtype, one block size, no rotary yet."""
    from octavo_plugin_kit.reference import ReferenceAttention, ReferencePlatform

    class PartialDevice(Device):
        supported_dtypes = (torch.float32,)

    class PartialAttention(ReferenceAttention):
        supported_block_sizes = (16,)

    class PartialOps(FusedOps):
        def rotary(self, q, k, positions, cos_sin_cache):
            raise NotImplementedError("fused rotary lands in v2")

    class PartialPlatform(ReferencePlatform):
        name = "kit_partial"
        device_cls = PartialDevice
        attention_cls = PartialAttention
        ops_cls = PartialOps

    code = _run_registered(PartialPlatform, ["-q", "-s", "-k", "rotary or test_attend_shapes"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    # rotary: 6 fp32 cases not provided, 12 in other dtypes skipped
    assert re.search(
        r"^rotary\s+not provided\s+platform\s+6 not provided, 12 skipped \(kit_partial does not "
        r"support bf16; kit_partial does not support fp16\)$",
        out,
        re.M,
    ), out[-2000:]
    # attend: of the 27 shapes 9 are fp32, and 3 of those use block size 16
    assert re.search(
        r"^attend\s+passed\s+3 passed, 24 skipped \(.*kit_partial: block size 32 is not supported "
        r"\(supported: \[16\]\)",
        out,
        re.M,
    ), out[-2000:]


def test_non_causal_cases_skip_with_the_back_ends_reason(capsys, one_thread):
    from octavo_plugin_kit.reference import ReferenceAttention, ReferencePlatform

    class CausalOnlyAttention(ReferenceAttention):
        def supports(self, layer, dtype, block_size):
            return (
                "only causal attention (decoders)" if not layer.causal else super().supports(layer, dtype, block_size)
            )

    class CausalOnlyPlatform(ReferencePlatform):
        name = "kit_causal_only"
        attention_cls = CausalOnlyAttention

    code = _run_registered(CausalOnlyPlatform, ["-q", "-s", "-k", "test_attend_non_causal or test_attend_padded"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert re.search(
        r"^attend\s+passed\s+3 passed, 9 skipped \(kit_causal_only: only causal attention \(decoders\)\)$", out, re.M
    ), out[-2000:]


def test_two_rank_check_skips_where_torch_sees_too_few_devices(capsys):
    """A platform on a device type with fewer than 2 devices here: the 2-rank collectives
    test skips, saying how many devices torch sees, instead of failing or hanging."""
    from octavo_plugin_kit.conformance.checks import devices_of_type
    from octavo_plugin_kit.reference import ReferencePlatform

    if (devices_of_type("cuda") or 0) >= 2:
        pytest.skip("this machine has 2 CUDA devices: the collectives would really run")

    class GpuDevice(Device):
        type = "cuda"

    class GpuPlatform(ReferencePlatform):
        name = "kit_one_gpu"
        device_cls = GpuDevice

    code = _run_registered(GpuPlatform, ["-q", "-s", "-k", "two_ranks"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert re.search(
        r"^communicator\s+skipped\s+1 skipped \(a 2-rank run needs 2 'cuda' devices; torch sees [01] here\)$",
        out,
        re.M,
    ), out[-2000:]


def test_source_column_reads_the_platforms_parts():
    """ "core default" where the part keeps the base's method, "platform" where it overrides."""
    from octavo_plugin_kit.reference import ReferenceAttention

    class Ops(FusedOps):
        def rms_norm(self, x, weight, eps, residual=None):
            return super().rms_norm(x, weight, eps, residual)

    class PackedLinear(LinearMethod):
        def process_weights_after_loading(self, layer):
            pass

    class Mixed(Platform):
        name = "mixed"
        attention_cls = ReferenceAttention
        ops_cls = Ops
        linear_cls = PackedLinear

    class Plain(Platform):
        name = "plain"
        attention_cls = AttentionBackend

    mixed, plain = Mixed(), Plain()
    assert [_source(mixed, k) for k in ("linear", "rms_norm", "rotary", "silu_and_mul", "sample")] == [
        "platform",
        "platform",
        "core default",
        "core default",
        "core default",
    ]
    assert {_source(plain, k) for k in ("linear", "rms_norm", "rotary", "silu_and_mul", "sample")} == {"core default"}
    assert _source(mixed, "attend") == ""  # required kernels have no default to compare with
