"""The device descriptor: what a platform computes on, and how the host talks to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch


class Device:
    """One process's device. Subclass it to describe yours; every method has a default that
    is right for a device that computes as it is called (a CPU).

    A platform's parts receive its Device when they are built; `local_rank` is the device
    index of this process (its tensor-parallel rank on the host), set before anything
    is allocated.
    """

    #: torch device type of the tensors ("cpu", "cuda", "xpu", ...)
    type: ClassVar[str] = "cpu"
    #: dtypes this device computes in, the preferred one first
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16, torch.float16)
    #: the torch.distributed backend of multi-process runs ("gloo", "nccl", "xccl", ...)
    dist_backend: ClassVar[str] = "gloo"

    def __init__(self) -> None:
        self.local_rank = 0

    def torch_device(self) -> torch.device:
        """This process's device."""
        if self.type == "cpu":
            return torch.device("cpu")
        return torch.device(self.type, self.local_rank)

    def default_dtype(self, model_dtype: torch.dtype | None) -> torch.dtype:
        """dtype for dtype="auto", given the checkpoint's own dtype (None if unknown)."""
        if model_dtype in self.supported_dtypes:
            return model_dtype
        return self.supported_dtypes[0]

    def kv_cache_budget_bytes(self, config: Any, profile: Callable[[], None]) -> int:
        """How many bytes the KV cache of this process may take, weights already loaded.

        `profile()` runs one forward at the largest token budget (and the sampler at the
        most rows): a device that sizes its cache from its free memory runs it while
        watching its peak-memory counter and keeps room for that peak. The default is a
        fixed budget, the user's `kv_cache_memory`, and does not call it.
        """
        return int(config.cache.kv_cache_memory)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on a synchronous device)."""

    def copy_to_host(self, tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
        """Start copying device tensors to host memory; the returned callable waits for those
        copies and returns the host tensors. On an asynchronous device it must not wait for
        work queued after the copies (the next step, under async scheduling). The default
        copies at once (copies even of host tensors: later in-place work must not show)."""
        out = [t.to("cpu", copy=True) for t in tensors]
        return lambda: out
