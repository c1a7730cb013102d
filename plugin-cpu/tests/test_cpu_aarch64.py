"""octavo-cpu's aarch64 kernels (csrc/kernels_neon.cpp and the portable ones), cross-compiled
with Debian's aarch64-linux-gnu-g++ and run under QEMU's user-mode emulation.

No aarch64 torch runs under qemu-user here, so the kernels are checked by a standalone C++
harness (tests/native/kernel_harness.cpp) against a scalar reference it computes in double
from the same inputs: linears (the GEMV and the packed GEMM, fp32 and bf16), RMSNorm with the
residual add, rotary, SiLU-and-mul, KV writes and paged attention (decode and a prefill chunk,
GQA), for the neon and the generic namespaces. Sampling and the one-call decode step are not in
the harness. `make test` installs the tools (the Makefile's cross-tools step).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1]
CXX = "aarch64-linux-gnu-g++"
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def test_neon_kernels_under_qemu(tmp_path):
    if shutil.which(CXX) is None or QEMU is None:
        pytest.fail(
            "needs Debian's aarch64 cross compiler and qemu-user: "
            "apt-get install g++-aarch64-linux-gnu qemu-user (make test does this)"
        )
    exe = tmp_path / "kernel_harness"
    csrc = PLUGIN / "csrc"
    build = [
        CXX,
        "-std=c++17",
        "-O2",
        "-fopenmp",
        "-ffp-contract=off",  # as CMakeLists.txt: the kernels spell out their FMAs
        "-static",  # qemu-aarch64 then needs no aarch64 root for shared libraries
        "-DOCTAVO_HARNESS_NEON",
        f"-I{csrc}",
        str(PLUGIN / "tests" / "native" / "kernel_harness.cpp"),
        str(csrc / "kernels_generic.cpp"),
        str(csrc / "kernels_neon.cpp"),
        "-o",
        str(exe),
    ]
    subprocess.run(build, check=True, timeout=300)
    run = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ISAs: generic neon" in run.stdout, run.stdout
