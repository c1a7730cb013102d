"""Tensors in memory backed by transparent huge pages (2 MiB), for weights the kernels stream.

A GEMM over a weight too big for the TLB's reach in 4 KiB pages (Zen 4: 3,072 L2 entries, 12
MiB) pays a page walk every 4 KiB it reads; in 2 MiB pages the same entries cover 6 GiB.
torch's CPU allocator asks for huge pages only when THP_MEM_ALLOC_ENABLE is set before its
first allocation, which a plugin imported after torch cannot arrange; so the tensors that
matter here (the packed GEMM weights) come from this allocator instead: chunks of anonymous
memory aligned to 2 MiB and advised MADV_HUGEPAGE, handed out by a bump pointer. A chunk is
unmapped when the last tensor carved from it is gone (each holds a reference to it).
Where the kernel offers no THP (`madvise` fails: other OSes, THP "never"), the memory is plain.
"""

from __future__ import annotations

import mmap

import torch

_HUGE = 2 << 20
_CHUNK = 64 << 20  # one mapping serves many weights; bigger requests get their own
_ALIGN = 64  # bytes between tensors: cache-line aligned starts


class _Chunk:
    def __init__(self, nbytes: int) -> None:
        size = -(-nbytes // _HUGE) * _HUGE
        # over-allocate by one huge page so that the used range can start 2 MiB-aligned
        self.map = mmap.mmap(-1, size + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = torch.frombuffer(self.map, dtype=torch.uint8)
        start = -whole.data_ptr() % _HUGE
        self.bytes = whole[start : start + size]
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self.map.madvise(mmap.MADV_HUGEPAGE, start, size)
            except OSError:
                pass
        self.used = 0

    def take(self, nbytes: int) -> torch.Tensor | None:
        off = -(-self.used // _ALIGN) * _ALIGN
        if off + nbytes > self.bytes.numel():
            return None
        self.used = off + nbytes
        return self.bytes[off : off + nbytes]


_current: _Chunk | None = None


def empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized flat tensor of `numel` elements in huge-page memory."""
    global _current
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes > _CHUNK // 4:
        return _Chunk(nbytes).take(nbytes).view(dtype)
    raw = _current.take(nbytes) if _current is not None else None
    if raw is None:
        _current = _Chunk(_CHUNK)
        raw = _current.take(nbytes)
    return raw.view(dtype)
