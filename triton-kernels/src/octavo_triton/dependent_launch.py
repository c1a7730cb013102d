"""Programmatic dependent launch (PDL, NVIDIA sm_90 and newer): a kernel's programs start
while the kernel before it on the stream drains, instead of after it has finished.

A batch-1 decode step of an 8B model is ~350 kernels inside one CUDA graph, and between two
of them the GPU idles while the last programs of one finish and the next one's programs are
launched and ramp up. With PDL (the `launch_pdl` launch option) the next kernel is launched
once every program of the current one has called `gdc_launch_dependents`; its programs then
wait in `gdc_wait` until the current kernel has completed and its writes are visible. The
GEMV loads its first weight tile before that wait: weights are never written during a step,
so they stream while the previous kernel drains.

Two rules every kernel launched this way follows, so that the chain stays ordered:
* before `wait_for_previous` it reads only memory that no kernel writes (weights);
* every program calls `wait_for_previous`, early returns included, so a kernel completes only
  after the one before it has, and a kernel two launches later still sees its writes.

`launch_options(tuning)` is what a launcher passes: nothing where the target's tuning entry
leaves PDL off, under the interpreter, with a triton that lacks it, or with
OCTAVO_TRITON_PDL=0 (for A/B measurements, and a way out should a driver misbehave).
"""

from __future__ import annotations

import functools
import os

import triton
import triton.language as tl

from octavo_triton import interpreting
from octavo_triton.tuning import Tuning

#: "0" turns PDL off whatever the tuning entry says
ENV = "OCTAVO_TRITON_PDL"


@functools.cache
def _triton_has_gdc() -> bool:
    try:
        from triton.language.extra import cuda
    except ImportError:
        return False
    return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")


def launch_options(tuning: Tuning) -> dict:
    """The launch keywords of a kernel that takes a `PDL` constexpr: {"PDL": bool} and, when
    on, {"launch_pdl": True} (back ends without the option must not be passed it)."""
    if not tuning.dependent_launch or interpreting() or os.environ.get(ENV) == "0" or not _triton_has_gdc():
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


@triton.jit
def _wait_pdl(PDL: tl.constexpr):
    """Wait until the previous kernel's writes are visible, then let the next kernel launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _no_pdl(PDL: tl.constexpr):
    pass


#: what every kernel calls first. Where this triton has no PDL it is a no-op: its compiler may
#: resolve the gdc calls even in the branch PDL=False never takes (triton-xpu 3.3 does, and
#: fails the SPIR-V compile of every kernel), so the calls must not be there at all
wait_for_previous = _wait_pdl if _triton_has_gdc() else _no_pdl
