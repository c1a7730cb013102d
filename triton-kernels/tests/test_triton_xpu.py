"""Every kernel compiles to SPIR-V through Intel's Triton back end (for a Data Center GPU Max),
for every dtype at aot.py's serving shapes, and fits its shared local memory. (The conformance
suite's shapes, `python -m octavo_triton.aot_xpu --conformance`, would double the time.)

Intel's triton (`triton-xpu` 3.3.0b1, the newest on PyPI, a pre-release for triton 3.3) and
the SYCL runtime wheel live under their own prefix (`make install` puts them in
.venv/triton-xpu; the `triton` package there would shadow triton 3.9), so the compile runs in
a subprocess with that prefix first on PYTHONPATH (`python -m octavo_triton.aot_xpu`). It also
needs Debian's Level Zero loader and a C++ compiler: the back end builds a small SYCL helper.
Where one of those is missing, the test skips and says which.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from octavo_triton import aot, aot_xpu

PREFIX = Path(os.environ.get("OCTAVO_TRITON_XPU_PREFIX", Path(sys.prefix) / "triton-xpu"))
SITE = Path(sysconfig.get_path("purelib", vars={"base": str(PREFIX), "platbase": str(PREFIX)}))


def _why_not() -> str | None:
    if not (SITE / "triton" / "backends" / "intel").is_dir():
        return (
            f"Intel's triton is not installed under {PREFIX}: pip install --prefix {PREFIX} --no-deps "
            "triton-xpu==3.3.0b1, then intel-sycl-rt (make install does both)"
        )
    if ctypes.util.find_library("ze_loader") is None:
        return "the Level Zero loader is missing (Intel's triton links it): apt-get install libze1 libze-dev"
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        return "no C++ compiler: Intel's triton builds a SYCL helper at start (apt-get install g++)"
    return None


pytestmark = [
    pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="compiling needs Triton without its interpreter"
    ),
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "octavo_triton.aot_xpu"], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    header, *rows = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    assert header["triton"].startswith("3.3"), f"{SITE} holds triton {header['triton']}, not triton-xpu"
    return rows


def test_every_kernel_compiles_to_spirv_for_every_dtype(results):
    failed = [f"  {r['case']}: {r['error']}" for r in results if r["error"]]
    assert not failed, "SPIR-V compile failures:\n" + "\n".join(failed)
    for dtype in aot.DTYPES:
        label = str(dtype).removeprefix("torch.")
        compiled = {r["kernel"] for r in results if f" {label}" in r["case"]}
        assert compiled == aot.KERNELS, f"{label}: not compiled: {sorted(aot.KERNELS - compiled)}"


def test_each_kernel_fits_the_shared_local_memory(results):
    over = [r for r in results if r.get("shared", 0) > aot_xpu.PVC_SHARED_LIMIT]
    assert not over, f"over {aot_xpu.PVC_SHARED_LIMIT} bytes of SLM: " + ", ".join(
        f"{r['kernel']} ({r['case']}): {r['shared']} B" for r in over
    )


def test_the_intel_entry_asks_for_a_precision_intels_back_end_takes():
    from octavo_triton.tuning import entry

    # XPUOptions.allowed_dot_input_precisions in triton-xpu 3.3: tf32, tf32x3, ieee
    assert entry("xpu", None).dot_precision in ("tf32", "tf32x3", "ieee")
