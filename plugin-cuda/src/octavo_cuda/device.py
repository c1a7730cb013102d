"""One NVIDIA GPU as octavo's device: dtypes, NCCL, the KV budget from free memory, and
host copies that do not wait for the next step.

Nothing here touches CUDA until a method is called on a running engine: discovery builds
the platform (and so this device) on every machine, GPU or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from octavo.platform import Device
from octavo_cuda import memory


class CudaDevice(Device):
    type = "cuda"
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    dist_backend = "nccl"

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        """Keep a half-precision checkpoint's dtype; float32 or unknown -> bfloat16 (every
        GPU these kernels accept, MIN_CAPABILITY and up, computes bf16 natively)."""
        if model_dtype in (torch.bfloat16, torch.float16):
            return model_dtype
        return torch.bfloat16

    def kv_cache_budget_bytes(self, config: Any, profile: Callable[[], None]) -> int:
        """Profile the activation peak, then octavo_cuda.memory's formula over free memory."""
        device = self.torch_device()
        return memory.kv_cache_budget_bytes(config, device, memory.profile_peak_bytes(profile, device))

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def copy_to_host(self, tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        """Copies into pinned buffers queued on the stream, then an event: waiting on the event
        does not wait for the step queued behind them (as `.cpu()` would, syncing the stream)."""
        out = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
        done = torch.cuda.Event()
        done.record()

        def wait() -> list[torch.Tensor]:
            done.synchronize()
            return out

        return wait
