"""Host values -> device tensors without stalling the host.

A copy from ordinary (pageable) host memory to an accelerator waits until the device has
finished the work queued before it, so one such copy issued after a forward has been
launched holds the host until the forward is done: its later launches and bookkeeping
then run while the device idles. Copies from pinned (page-locked) memory are queued
like kernels instead. Pinned buffers come from torch's caching host allocator, which
keeps a buffer until its copy has run, so reusing them is safe and cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_pinning_works: dict[str, bool] = {}


def to_device(data: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.tensor(data, dtype) on `device`, copied asynchronously where the device allows."""
    if device.type == "cpu":
        return torch.tensor(data, dtype=dtype)
    if _pinning_works.get(device.type, True):
        try:
            return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)
        except RuntimeError:  # a backend without pinned host memory: plain copies, once decided
            _pinning_works[device.type] = False
    return torch.tensor(data, dtype=dtype, device=device)


def tensor_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, copied asynchronously where the device allows (as `to_device`)."""
    if device.type == "cpu":
        return t
    if _pinning_works.get(device.type, True):
        try:
            return t.pin_memory().to(device, non_blocking=True)
        except RuntimeError:  # a backend without pinned host memory: plain copies, once decided
            _pinning_works[device.type] = False
    return t.to(device)


def copy_to_host_now(tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """`Platform.copy_to_host` for devices that compute as they are called: host copies made
    at once (copies even of host tensors, so later in-place work cannot show in them)."""
    out = [t.to("cpu", copy=True) for t in tensors]
    return lambda: out
