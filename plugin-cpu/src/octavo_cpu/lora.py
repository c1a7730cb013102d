"""Torch-facing wrappers of the multi-LoRA kernels in `octavo_cpu._lora` (csrc/lora.cpp).

`supports(...)` says whether a call fits the kernels (float32 or bfloat16 throughout, CPU
tensors, weights contiguous); callers run core's torch definition otherwise. OCTAVO_CPU_NATIVE=0
turns these off with the other native kernels.
"""

from __future__ import annotations

import os

import torch

try:
    if os.environ.get("OCTAVO_CPU_NATIVE", "1") == "0":
        raise ImportError("disabled by OCTAVO_CPU_NATIVE=0")
    from octavo_cpu import _lora
except ImportError:  # a source tree without a build: core's torch definition runs
    _lora = None

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # csrc/lora.cpp's Dtype


def supports(*tensors: torch.Tensor) -> bool:
    """The kernels take these: one dtype they know, on the CPU, last dims contiguous."""
    dtype = tensors[0].dtype
    return (
        _lora is not None
        and dtype in _DTYPES
        and all(t.dtype == dtype and t.device.type == "cpu" and t.stride(-1) == 1 for t in tensors)
    )


def _slots(slots: torch.Tensor) -> torch.Tensor:
    return slots if slots.dtype == torch.int64 and slots.is_contiguous() else slots.to(torch.int64).contiguous()


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """`FusedOps.lora_shrink`: x [T, I], a [S, N, R, I] (x's dtype), slots [T] -> h [T, N, R]."""
    s, n, r, i = a.shape
    a = a.contiguous()
    slots = _slots(slots)
    h = torch.empty(x.shape[0], n, r, dtype=x.dtype)
    _lora.lora_shrink(
        h.data_ptr(),
        x.data_ptr(),
        x.stride(0),
        a.data_ptr(),
        slots.data_ptr(),
        x.shape[0],
        s,
        n * r,
        i,
        _DTYPES[x.dtype],
        torch.get_num_threads(),
    )
    return h


def lora_expand(
    y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
) -> torch.Tensor:
    """`FusedOps.lora_expand`, in place: y [T, O], h [T, N, R], b [S, R, O] (y's dtype). Returns y."""
    s, r, o = b.shape
    assert sum(slice_sizes) == o and h.shape[1] == len(slice_sizes), (slice_sizes, h.shape, b.shape)
    h, b, slots = h.contiguous(), b.contiguous(), _slots(slots)
    starts = torch.tensor([0, *torch.tensor(slice_sizes).cumsum(0).tolist()], dtype=torch.int64)
    _lora.lora_expand(
        y.data_ptr(),
        y.stride(0),
        h.data_ptr(),
        b.data_ptr(),
        slots.data_ptr(),
        y.shape[0],
        s,
        len(slice_sizes),
        r,
        o,
        starts.data_ptr(),
        _DTYPES[y.dtype],
        torch.get_num_threads(),
    )
    return y
