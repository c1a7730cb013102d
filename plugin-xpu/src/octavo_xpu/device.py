"""One Intel GPU as octavo's device: torch's `xpu` device type, XCCL for collectives, and
the facts of the GPU read from torch.xpu's device properties.

The rest (KV budget from free memory, pinned copies behind an event) is the shared Triton
GPU device's, through `torch.xpu`, which has torch.cuda's memory, stream and event API.
"""

from __future__ import annotations

import torch

from octavo_triton.platform_parts import TritonGpuDevice


class XpuDevice(TritonGpuDevice):
    type = "xpu"
    dist_backend = "xccl"

    def _facts(self) -> str:
        """The GPU of this process in one line, for the log."""
        props = torch.xpu.get_device_properties(self.local_rank)
        parts = [f"{props.name}", f"{props.total_memory / 2**30:.1f} GiB"]
        # the XPU properties differ between torch versions: report what this one has
        for attr, label in (("gpu_eu_count", "EUs"), ("max_compute_units", "compute units")):
            if hasattr(props, attr):
                parts.append(f"{getattr(props, attr)} {label}")
        if hasattr(props, "sub_group_sizes"):
            parts.append(f"sub-groups {props.sub_group_sizes}")
        return ", ".join(parts)
