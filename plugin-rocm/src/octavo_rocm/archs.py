"""What octavo-rocm knows of each AMD GPU architecture the kernels are tuned for.

The kernels' tiles per architecture live in `octavo_triton.tuning` (and are compiled for
each of these in CI by `octavo_triton.aot`); this table holds the hardware facts a running
engine reports and checks: wavefront width, LDS a workgroup may allocate, and the fp8 format
of the matrix units. The values are AMD's published ones (CDNA3 / CDNA4 / RDNA3 ISA
documents); none was measured here, as no AMD GPU was at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AmdArch:
    name: str  # as ROCm names it: gcnArchName without its feature flags
    products: str
    wavefront: int  # lanes a wave runs (RDNA runs wave32 by default; CDNA only wave64)
    lds_bytes: int  # LDS one workgroup may allocate
    #: the fp8 format of its matrix units, None without any: gfx94x implement the "fnuz"
    #: variant (no negative zero, one NaN, exponent bias 8), gfx950 the OCP e4m3 of NVIDIA's
    fp8: torch.dtype | None


ARCHS = {
    a.name: a
    for a in (
        AmdArch("gfx942", "MI300X, MI300A, MI325X", 64, 64 << 10, torch.float8_e4m3fnuz),
        AmdArch("gfx950", "MI350X, MI355X", 64, 160 << 10, torch.float8_e4m3fn),
        AmdArch("gfx1100", "Radeon RX 7900 XTX / PRO W7900 (RDNA3)", 32, 64 << 10, None),
    )
}

#: arch families Triton's AMD back end generates code for; the kernels need its MFMA / WMMA
#: matrix instructions (CDNA2 and later, RDNA3 and later). Others are refused at start-up.
TRITON_FAMILIES = ("gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")


def arch_name(gcn_arch_name: str) -> str:
    """ "gfx942:sramecc+:xnack-" -> "gfx942": the flags after the name do not change the code."""
    return gcn_arch_name.split(":")[0]


def known(name: str) -> AmdArch | None:
    """The table's entry for an arch, or for another stepping of its major.minor (gfx1101
    shares gfx1100's wavefront, LDS and matrix units), or None."""
    if name in ARCHS:
        return ARCHS[name]
    return next((a for a in ARCHS.values() if a.name[:-1] == name[:-1]), None)


def supported(name: str) -> bool:
    return name.startswith(TRITON_FAMILIES)
