"""One GPU as octavo's device, whichever vendor's: dtypes, the KV budget from free memory,
and host copies that do not wait for the next step.

Everything device-specific goes through torch's module for the device type (`torch.cuda`
on NVIDIA, and on ROCm, where torch keeps the CUDA names for HIP; `torch.xpu` on Intel):
the vendor plugins subclass this with their `type` and `dist_backend`. Nothing here
touches the GPU until a method is called on a running engine: discovery builds the platform
(and so this device) on every machine, GPU or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from octavo.platform import Device
from octavo_triton.platform_parts import memory


class TritonGpuDevice(Device):
    type = "cuda"
    #: every GPU the kernels accept computes bf16 natively (tuning.py's entries are for those)
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    dist_backend = "nccl"

    def _module(self) -> Any:
        """torch.cuda, torch.xpu, ...: the API of this device type."""
        return torch.get_device_module(self.type)

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        """Keep a half-precision checkpoint's dtype; float32 or unknown -> bfloat16."""
        if model_dtype in (torch.bfloat16, torch.float16):
            return model_dtype
        return torch.bfloat16

    def kv_cache_budget_bytes(self, config: Any, profile: Callable[[], None]) -> int:
        """Profile the activation peak, then memory.py's formula over free memory."""
        device, module = self.torch_device(), self._module()
        return memory.kv_cache_budget_bytes(config, module, device, memory.profile_peak_bytes(profile, module, device))

    def synchronize(self) -> None:
        self._module().synchronize()

    def copy_to_host(self, tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        """Copies into pinned buffers queued on the stream, then an event: waiting on the event
        does not wait for the step queued behind them (as `.cpu()` would, syncing the stream)."""
        out = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
        done = self._module().Event()
        done.record()

        def wait() -> list[torch.Tensor]:
            done.synchronize()
            return out

        return wait
