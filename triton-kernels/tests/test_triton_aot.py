"""Every kernel compiles for each GPU in `octavo_triton.aot.TARGETS` that no test machine has,
for every dtype, with that GPU's tuning entry, and fits its shared memory (LDS on AMD).

The real back ends compile on this CPU machine (LLVM's AMDGPU target; ptxas, which ships in
the triton wheel); nothing runs. The limits are the hardware's (aot.TARGETS says where each
comes from), not numbers read off the compiled kernels. Each target compiles in a worker
process of its own, with a fresh Triton cache, as many at once as there are CPUs (35-40 s on
2 idle cores; sm_80's float32 prefill kernel alone takes 10 s).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="compiling needs Triton without its interpreter"
    ),
]

from octavo_triton import aot  # noqa: E402

#: every kernel the package launches; each must be compiled for each dtype
KERNELS = {
    "_decode_kernel",
    "_combine_kernel",
    "_prefill_kernel",
    "_write_kv_kernel",
    "_rms_norm_kernel",
    "_rotary_kernel",
    "_silu_and_mul_kernel",
    "_gemv_kernel",
}


#: targets a lent GPU compiles and runs these kernels on (the GPU run of test_triton_kernels.py),
#: left to `python -m octavo_triton.aot NAME` here: sm_90 alone would add half again to this test
ON_A_LENT_GPU = {"cuda:90"}
CHECKED = sorted(set(aot.TARGETS) - ON_A_LENT_GPU)


def _back_end_installed(name: str) -> bool:
    from triton.backends import backends

    return {"cuda": "nvidia", "hip": "amd"}[aot.TARGETS[name].backend] in backends


@pytest.fixture(scope="module")
def reports():
    """{target name: Future[aot.Report]}, all submitted at once, slowest first."""
    workers = min(len(CHECKED), os.cpu_count() or 1)
    # spawn: a fork of this process would inherit torch's thread pools and pytest's state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # CUDA first: ptxas on the float32 attention is the longest single job
        order = sorted(filter(_back_end_installed, CHECKED), key=lambda name: not name.startswith("cuda"))
        yield {name: pool.submit(aot.compile_for, name) for name in order}


@pytest.mark.parametrize("name", CHECKED)
def test_every_kernel_compiles_and_fits(reports, name):
    if not _back_end_installed(name):
        pytest.skip(f"this triton build has no back end for {name}")
    report = reports[name].result()
    print(report.table())
    target = aot.TARGETS[name]
    for dtype in aot.DTYPES:
        label = str(dtype).removeprefix("torch.")
        compiled = {k.kernel for k in report.kernels if f" {label}" in k.case}
        assert compiled == KERNELS, f"{name} {label}: not compiled: {sorted(KERNELS - compiled)}"
    over = report.over_limit()
    assert not over, f"{name}: over its {target.shared_limit} bytes of shared memory ({target.why}):\n" + "\n".join(
        f"  {k.kernel} ({k.case}): {k.shared} B" for k in over
    )
    for k in report.kernels:
        # warps of this target's width: a workgroup holds at most 1,024 threads on all of them
        assert k.num_warps * target.warp_size <= 1024, f"{k.kernel} ({k.case}): {k.num_warps} warps"
