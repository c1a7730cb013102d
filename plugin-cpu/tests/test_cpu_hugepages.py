"""octavo_cpu.hugepages: tensors carved from 2 MiB-aligned THP chunks (the packed GEMM weights)."""

from __future__ import annotations

import gc

import pytest
import torch

from octavo_cpu import hugepages

HUGE = 2 << 20


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unavailable"


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _huge_kb_at(ptr: int) -> int:
    """AnonHugePages of the mapping that holds address ptr."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= ptr < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


def test_tensors_are_disjoint_aligned_and_writable():
    sizes = [1, 63, 4096, 300_000, 5 << 20, 3, 20 << 20]  # elements; the last gets its own chunk
    ts = [hugepages.empty(n, torch.bfloat16) for n in sizes]
    for i, t in enumerate(ts):
        assert t.dtype == torch.bfloat16 and t.shape == (sizes[i],) and t.is_contiguous()
        assert t.data_ptr() % 64 == 0
        t.fill_(float(i))
    for i, t in enumerate(ts):  # no tensor overwrote another
        assert torch.all(t == float(i)), i
    assert ts[-1].data_ptr() % HUGE == 0  # a chunk of its own starts on a huge page
    f = hugepages.empty(10, torch.float32)
    f.copy_(torch.arange(10.0))
    assert f.tolist() == list(range(10))


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_memory_returns_when_the_last_tensor_goes():
    gc.collect()
    before = _rss_kb()
    t = hugepages.empty(48 << 20, torch.uint8)  # bigger than a shared chunk: its own mapping
    t.fill_(1)
    view = t[1000:2000]
    del t
    assert _rss_kb() - before > 40_000  # the view keeps the mapping
    assert torch.all(view == 1)
    del view
    gc.collect()
    assert _rss_kb() - before < 16_000


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason=f"transparent huge pages: {_thp_mode()}")
def test_packed_gemm_weights_sit_in_huge_pages():
    from octavo_cpu import gemm

    if not gemm.available():
        pytest.skip("needs the native kernels")
    w = torch.randn(8192, 576).bfloat16()  # 9 MiB packed
    packed = gemm.pack(w)
    packed.fill_(0)  # touch every page (pack wrote them already; be sure)
    assert _huge_kb_at(packed.data_ptr()) >= 4096, "the packed weight is not in huge pages"
