"""octavo-cpu passes the conformance suite, and the suite's entry points behave.

The full run goes through a subprocess from an unrelated directory, exactly as a
vendor types it (`pytest --octavo-platform cpu`); the quicker checks call
`run_check` in-process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from octavo_plugin_kit.cli import run_check

# The suite's tensors are small: extra OpenMP threads only spin-wait, which on a busy
# 2-core machine makes the run 5-10x slower.
SMALL_SHAPES_ENV = {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
KERNELS = ("platform", "write_kv", "attend", "linear", "rms_norm", "rotary", "silu_and_mul", "communicator")


def test_cpu_passes_the_whole_suite_from_any_directory(tmp_path):
    # an unrelated project with its own failing test: the suite must run instead of it
    (tmp_path / "test_unrelated.py").write_text("def test_not_the_suite():\n    assert False\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--octavo-platform", "cpu", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **SMALL_SHAPES_ENV},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "test_not_the_suite" not in out
    passed = int(re.search(r"^(\d+) passed.* in [\d.]+s", out, re.M).group(1))  # pytest's last line
    assert passed >= 100, f"only {passed} conformance tests ran:\n{out[-3000:]}"
    assert "octavo conformance: platform 'cpu' (octavo-cpu, API 1.0)" in out
    for kernel in KERNELS:
        assert re.search(rf"^{kernel}\s+passed", out, re.M), f"{kernel} missing from the table:\n{out[-3000:]}"


@pytest.fixture
def one_thread():
    """In-process suite runs with one torch thread (see SMALL_SHAPES_ENV), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_check_forwards_pytest_arguments(capsys, one_thread):
    assert run_check("cpu", ["-q", "-s", "-k", "silu_and_mul"]) == 0
    out = capsys.readouterr().out
    # octavo-cpu provides silu_and_mul itself (a native kernel), so the source is the platform
    assert re.search(r"^silu_and_mul\s+passed\s+platform\s+9 passed", out, re.M), out
    assert not re.search(r"^attend", out, re.M), "-k must select only the silu_and_mul tests"


def test_run_check_exhaustive_runs_every_combination(capsys, one_thread):
    assert run_check("cpu", ["-q", "-s", "-k", "test_write_kv_default_layout", "--octavo-exhaustive"]) == 0
    assert re.search(r"^write_kv\s+passed\s+27 passed", capsys.readouterr().out, re.M)


def test_unknown_platform_is_one_usage_error_naming_what_is_installed(capsys):
    assert run_check("no_such_device", ["-q", "-s"]) == pytest.ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "cannot use platform 'no_such_device'" in err
    assert "installed:" in err and "cpu (octavo-cpu" in err
    assert "pip install octavo-no_such_device" in err


def test_the_suite_skips_cleanly_without_a_platform(capsys):
    """pytest pointed at the suite without --octavo-platform: every test skips, none errors."""
    from octavo_plugin_kit.pytest_plugin import SUITE_DIR

    assert pytest.main([SUITE_DIR, "-q", "-s", "-rs", "-k", "silu or identity"]) == 0
    out = capsys.readouterr().out
    assert "passed" not in out and "choose a platform with --octavo-platform NAME" in out


def test_table_reports_skips_with_reasons_and_kernels_not_provided(capsys, one_thread):
    """A platform that supports less: one dtype, one block size, no rotary yet."""
    import types

    from octavo.platform import get_plugin_manager, hookimpl
    from octavo.platform.discovery import register_plugin
    from octavo_plugin_kit.reference import ReferenceAttention, ReferencePlatform

    class PartialAttention(ReferenceAttention):
        supported_block_sizes = (16,)

    class PartialPlatform(ReferencePlatform):
        name = "kit_partial"
        supported_dtypes = (torch.float32,)

        def make_attention_backend(self):
            return PartialAttention()

        def rotary(self, q, k, positions, cos_sin_cache):
            raise NotImplementedError("fused rotary lands in v2")

    plugin = types.ModuleType("kit_partial_plugin")
    plugin.octavo_platforms = hookimpl(lambda: [PartialPlatform])
    register_plugin(plugin, name="kit_partial")
    try:
        code = run_check("kit_partial", ["-q", "-s", "-k", "rotary or test_attend_shapes"])
    finally:
        get_plugin_manager(refresh=True)
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
