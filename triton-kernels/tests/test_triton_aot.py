"""Every kernel compiles for each GPU in `octavo_triton.aot.TARGETS` that no test machine has,
for every dtype, with that GPU's tuning entry, and fits its shared memory (LDS on AMD); for
octavo-rocm's archs (gfx942, gfx950, gfx1100) also at the conformance suite's shapes.

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

#: targets a lent GPU compiles and runs these kernels on (the GPU run of test_triton_kernels.py),
#: left to `python -m octavo_triton.aot NAME` here: sm_90 alone would add half again to this test
ON_A_LENT_GPU = {"cuda:90"}
CHECKED = sorted(set(aot.TARGETS) - ON_A_LENT_GPU)
#: octavo-rocm's archs: compiled at the conformance suite's shapes too
AT_CONFORMANCE_SHAPES = {"hip:gfx942", "hip:gfx950", "hip:gfx1100"}


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
        yield {name: pool.submit(aot.compile_for, name, name in AT_CONFORMANCE_SHAPES) for name in order}


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
        assert compiled == aot.KERNELS, f"{name} {label}: not compiled: {sorted(aot.KERNELS - compiled)}"
    if name in AT_CONFORMANCE_SHAPES:
        # both attention kernels for every row of the orthogonal array (GQA ratio and block size are
        # compile-time constants of theirs), every kernel at the suite's shapes; the limits below
        conformance = [k for k in report.kernels if k.case.startswith("conformance")]
        for h, g, b, _ in aot.L9:
            d, qpk, block = aot.CONFORMANCE_HEAD_DIMS[min(h, 1)], aot.CONFORMANCE_GQA[g], aot.CONFORMANCE_BLOCK_SIZES[b]
            for kernel in ("decode", "prefill"):
                case = f"head {d} gqa {qpk} block {block} {kernel}"
                assert any(k.case.endswith(case) for k in conformance), f"{name}: {case} not compiled"
        compiled = {k.kernel for k in conformance}
        assert compiled == aot.KERNELS, f"{name}: not compiled at the suite's shapes: {sorted(aot.KERNELS - compiled)}"
    over = report.over_limit()
    assert not over, f"{name}: over its {target.shared_limit} bytes of shared memory ({target.why}):\n" + "\n".join(
        f"  {k.kernel} ({k.case}): {k.shared} B" for k in over
    )
    for k in report.kernels:
        # warps of this target's width: a workgroup holds at most 1,024 threads on all of them
        assert k.num_warps * target.warp_size <= 1024, f"{k.kernel} ({k.case}): {k.num_warps} warps"


def test_the_conformance_shapes_are_the_kits():
    """aot's copy of the conformance suite's shapes follows the suite (head sizes the kernels
    take, GQA ratios, block sizes, KV heads)."""
    from octavo_plugin_kit.conformance import test_attention

    assert set(aot.CONFORMANCE_HEAD_DIMS) == {d for d in test_attention.HEAD_DIMS if d & (d - 1) == 0}
    assert aot.CONFORMANCE_GQA == test_attention.GQA_RATIOS
    assert aot.CONFORMANCE_BLOCK_SIZES == test_attention.BLOCK_SIZES
    assert aot.CONFORMANCE_KV_HEADS == test_attention.NUM_KV_HEADS


def test_the_orthogonal_array_covers_every_pair():
    levels = [(0, 1, 2)] * 4
    for a in range(4):
        for b in range(a + 1, 4):
            pairs = {(row[a], row[b]) for row in aot.L9}
            assert pairs == {(x, y) for x in levels[a] for y in levels[b]}, (a, b)
