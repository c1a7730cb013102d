"""Compile every kernel to SPIR-V through Intel's Triton back end, with no Intel GPU.

Intel's back end is a separate build of triton (`triton-xpu` on PyPI, a pre-release for
triton 3.3, beside the SYCL runtime wheel `intel-sycl-rt` and Debian's Level Zero loader,
`libze1` / `libze-dev`). It installs as the package `triton`, so it cannot sit beside the
triton the other kernels use: it lives in a folder of its own, put first on PYTHONPATH for
this module only.

    PYTHONPATH=.venv/triton-xpu/lib/python3.11/site-packages python -m octavo_triton.aot_xpu [--conformance]

As `aot.py` does for AMD and NVIDIA, a stand-in driver reports the target (a Data Center GPU
Max, "pvc": the properties Triton's Intel back end reads, since it names targets by a dict
of them, not by a name) and turns launches into no-ops; the launchers then run on empty CPU
tensors with the table's Intel entry (`tuning.TABLE[("xpu", None)]`), so the real back end
lowers each kernel variant to SPIR-V and nothing runs: aot.py's cases, the serving shapes, and
with `--conformance` the conformance suite's too. triton 3.3 has no compilation listener, so
`triton.compiler.compile` is wrapped to record each kernel.

Prints one JSON object per case: {"case", "kernel", "shared", "num_warps", "error"}; a case
whose compile raised has "error" set (the exception's first line) and no kernel.
"""

from __future__ import annotations

import json
import os
import sys

import torch

#: the target: Intel Data Center GPU Max 1550 (Ponte Vecchio) as its driver reports it; the
#: matrix-unit (DPAS) and 2D block I/O extensions are what tl.dot and block loads lower to
PVC = {
    "name": "Intel(R) Data Center GPU Max 1550",
    "architecture": 0,  # the SYCL enum's value is only read to ask `ocloc`, which is absent here
    "gpu_eu_count": 1024,
    "gpu_subslice_count": 128,
    "max_work_group_size": 1024,
    "max_num_sub_groups": 64,
    "sub_group_sizes": [16, 32],
    "has_fp64": True,
    "has_subgroup_matrix_multiply_accumulate": True,
    "has_subgroup_matrix_multiply_accumulate_tensor_float32": True,
    "has_subgroup_2d_block_io": True,
    "has_bfloat16_conversions": True,
}
#: shared local memory one work-group may allocate on a Max 1550 (128 KiB per Xe-core)
PVC_SHARED_LIMIT = 128 << 10
WARP_SIZE = 32  # Triton's Intel back end runs 32-wide sub-groups by default (threads_per_warp)


class _StandInDriver:
    """What triton 3.3's JIT and CompiledKernel ask of a driver, for a target that is not here."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("xpu", PVC, WARP_SIZE)
        self.utils = self

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return "aot:xpu:pvc"

    def get_current_stream(self, device):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_properties(self, device):
        return {"max_shared_mem": 1 << 30, "multiprocessor_count": 1}

    def load_binary(self, *args):
        return None, None, 0, 0

    def launcher_cls(self, src, metadata):
        return lambda *args, **kwargs: None


def compile_all(conformance: bool) -> list[dict]:
    """Compile aot.py's cases with the Intel entry (with `conformance`, the suite's shapes too)."""
    import triton.compiler
    from triton.runtime.driver import driver

    from octavo_triton.aot import _cases
    from octavo_triton.tuning import entry

    compiled: list[dict] = []
    real_compile = triton.compiler.compile

    def recording_compile(src, target=None, options=None):
        kernel = real_compile(src, target=target, options=options)
        compiled.append({"kernel": kernel.metadata.name, "shared": kernel.metadata.shared})
        compiled[-1]["num_warps"] = kernel.metadata.num_warps
        return kernel

    results = []
    triton.compiler.compile = recording_compile  # the JIT looks it up when it binds a kernel
    driver.set_active(_StandInDriver())
    try:
        for case, call in _cases(entry("xpu", None), conformance):
            before = len(compiled)
            try:
                call()
            except Exception as e:  # report the case and go on: the caller decides what must compile
                results.append({"case": case, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"})
                continue
            for kernel in compiled[before:]:
                results.append({"case": case, **kernel, "error": None})
    finally:
        triton.compiler.compile = real_compile
    return results


def main(argv: list[str]) -> int:
    # Intel's triton builds its SYCL helpers with a C++ compiler only where torch sees an Intel GPU,
    # and with the C compiler elsewhere, which leaves them without the C++ runtime: name one
    os.environ.setdefault("CC", "g++")
    import triton

    print(json.dumps({"triton": triton.__version__, "shared_limit": PVC_SHARED_LIMIT}))
    for row in compile_all("--conformance" in argv):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
