"""One AMD GPU as octavo's device: torch's `cuda` device type under HIP, RCCL behind the
`nccl` name, and the facts of the GPU read from torch's device properties.

Everything else (KV budget from free memory, pinned copies behind an event) is the shared
Triton GPU device's: ROCm's torch keeps the CUDA names for HIP's memory counters, streams,
events and graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo_rocm import archs
from octavo_triton.platform_parts import TritonGpuDevice


@dataclass(frozen=True)
class GpuFacts:
    """What the running engine logs about its GPU and checks against the arch table."""

    name: str  # the marketing name torch reports
    arch: str  # gfx942, gfx1100, ...
    compute_units: int
    wavefront: int
    lds_bytes: int  # LDS a workgroup may allocate
    fp8: torch.dtype | None

    def describe(self) -> str:
        fp8 = str(self.fp8).removeprefix("torch.") if self.fp8 else "none"
        return (
            f"{self.name} ({self.arch}): {self.compute_units} CUs, wave{self.wavefront}, "
            f"{self.lds_bytes >> 10} KiB LDS per workgroup, fp8 {fp8}"
        )


class RocmDevice(TritonGpuDevice):
    type = "cuda"  # ROCm's torch names HIP devices "cuda"
    dist_backend = "nccl"  # RCCL, under NCCL's name in ROCm's torch

    def _facts(self) -> GpuFacts:
        """The GPU of this process, from torch's properties (ROCm builds add gcnArchName,
        warp_size and the LDS size); the arch table fills what an older torch lacks."""
        props = torch.cuda.get_device_properties(self.local_rank)
        arch = archs.arch_name(getattr(props, "gcnArchName", ""))
        entry = archs.known(arch)
        return GpuFacts(
            name=props.name,
            arch=arch,
            compute_units=props.multi_processor_count,
            wavefront=getattr(props, "warp_size", 0) or (entry.wavefront if entry else 64),
            lds_bytes=getattr(props, "shared_memory_per_block", 0) or (entry.lds_bytes if entry else 64 << 10),
            fp8=entry.fp8 if entry else None,
        )
