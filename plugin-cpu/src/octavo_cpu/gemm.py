"""bf16 linear at every row count on the native packed GEMM (csrc/gemm_bf16.h).

torch's bf16 linear (oneDNN) reorders the weight into its blocked layout on every call; on
SmolLM2's shapes at 64 rows (a decode step of 64 requests) it reaches 190-270 GFLOP/s of the
2-core Zen 4's ~460 vdpbf16ps peak, the native kernel on weights packed once (at load)
335-400. On prefill chunks (512-2048 rows) the two are close: native 1-12% ahead
(bench/gemm.py; gemm_throughput.py measures the whole workload). For decode rows (1-8) the
packed panels also stream faster than the native GEMV reads the row-major weight
(`linear.linear_path`, docs/cpu.md).

`CpuLinearMethod` packs each weight once, when the model's weights are loaded, and keeps
the packed copy on its layer in place of the checkpoint-layout weight.

Debugging switch (read at import; `ENABLED` may be set at run time, before an engine loads
its weights, for A/B measurements):
  OCTAVO_CPU_GEMM=0   no packed GEMM: the GEMV up to 8 rows, torch's linear above
"""

from __future__ import annotations

import os

import torch

from octavo_cpu import _native, hugepages

#: False: CpuLinearMethod packs nothing, its linears keep the GEMV and torch's matmul
ENABLED = os.environ.get("OCTAVO_CPU_GEMM", "1") != "0"


def available() -> bool:
    """The avx512_bf16 kernels run here (not on lower ISAs, nor with OCTAVO_CPU_ISA lowered)."""
    return _native.available() and _native._C.gemm_available()


def pack(weight: torch.Tensor) -> torch.Tensor:
    """The kernel's layout of a bf16 weight [N, K] (a flat bf16 tensor)."""
    assert weight.dtype == torch.bfloat16 and weight.dim() == 2
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    n, k = weight.shape
    # huge pages: a GEMM streams the packed weights, and in 4 KiB pages it pays a TLB miss
    # every 4 KiB (hugepages.py)
    out = hugepages.empty(_native._C.gemm_packed_elems(n, k), dtype=torch.bfloat16)
    _native._C.gemm_pack(out.data_ptr(), weight.data_ptr(), weight.stride(0), n, k, torch.get_num_threads())
    return out


def linear(
    x: torch.Tensor, w_packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ weight.T (+ bias), bf16 in and out, fp32 sums; x [..., K] (rows may be strided),
    w_packed = `pack(weight)` of the [out_features, K] weight."""
    k, n = x.shape[-1], out_features
    assert x.dtype == torch.bfloat16, f"the packed GEMM takes bf16 x, not {x.dtype}"
    assert w_packed.numel() == _native._C.gemm_packed_elems(n, k), f"packed weight does not fit x {tuple(x.shape)}"
    x2, bias, bias_ptr = _native.linear_operands(x, n, bias)
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.bfloat16)
    _native._C.gemm(
        y.data_ptr(), n, x2.data_ptr(), x2.stride(0), w_packed.data_ptr(), bias_ptr, m, n, k, torch.get_num_threads()
    )
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)
