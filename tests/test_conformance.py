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

from octavo_plugin_kit.cli import run_check

KERNELS = ("platform", "write_kv", "attend", "linear", "rms_norm", "rotary", "silu_and_mul", "communicator")


def test_cpu_passes_the_whole_suite_from_any_directory(tmp_path):
    # an unrelated project with its own failing test: the suite must run instead of it
    (tmp_path / "test_unrelated.py").write_text("def test_not_the_suite():\n    assert False\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--octavo-platform", "cpu", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "test_not_the_suite" not in out
    passed = int(re.search(r"^(\d+) passed.* in [\d.]+s", out, re.M).group(1))  # pytest's last line
    assert passed >= 100, f"only {passed} conformance tests ran:\n{out[-3000:]}"
    assert "octavo conformance: platform 'cpu' (octavo-cpu, API 1.0)" in out
    for kernel in KERNELS:
        assert re.search(rf"^{kernel}\s+passed", out, re.M), f"{kernel} missing from the table:\n{out[-3000:]}"


def test_run_check_forwards_pytest_arguments(capsys):
    assert run_check("cpu", ["-q", "-s", "-k", "silu_and_mul"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^silu_and_mul\s+passed\s+core default\s+9 passed", out, re.M), out
    assert not re.search(r"^attend", out, re.M), "-k must select only the silu_and_mul tests"


def test_run_check_exhaustive_runs_every_combination(capsys):
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
