"""Linear layers at every row count on the native packed GEMM, at every ISA level.

Two kernels read weights packed once, at load (csrc/kernels.h says which runs where):

* bf16 weights where the CPU has AVX512_BF16: vdpbf16ps on k-pair panels (csrc/gemm_bf16.h),
  and AMX tiles on the same panels from 32 rows on at the "amx" level (csrc/kernels_amx.cpp).
  torch's bf16 linear (oneDNN) reorders the weight into its blocked layout on every call; on
  SmolLM2's shapes at 64 rows it reaches 190-270 GFLOP/s of the 2-core Zen 4's ~460
  vdpbf16ps peak, the native kernel 335-400 (bench/gemm.py).
* every other weight (bf16 below AVX512_BF16, fp32 everywhere): fp32 FMAs on panels of the
  weight in its own dtype (csrc/gemm_fma.h), bf16 widened to fp32 in registers. Below
  AVX512_BF16 torch's bf16 matmul has no fast kernel: this is what makes bf16 serve there.

For decode rows (1-8) the packed panels also stream faster than the native GEMV reads the
row-major weight (`linear.linear_path`, docs/cpu.md). The layout belongs to the ISA level
the weight was packed under (`layout`): a weight packed under one level is refused under
another (OCTAVO_CPU_ISA is read once, at import, before any weight loads).

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
    """The native kernels run here (the packed GEMM exists at every level)."""
    return _native.available()


def packs(dtype: torch.dtype) -> bool:
    """Whether CpuLinearMethod packs weights of `dtype` at the running level: the packed GEMM
    is where it was measured faster than torch's linear (docs/benchmarks.md)."""
    return ENABLED and available() and dtype in _PACKED_DTYPES.get(_native.isa(), ())


# per level, the weight dtypes whose packed GEMM beats torch's linear (bench/gemm.py, C1/C2)
_PACKED_DTYPES = {
    "generic": (torch.bfloat16,),
    "avx2": (torch.bfloat16,),
    "avx512": (torch.bfloat16,),
    "avx512_bf16": (torch.bfloat16,),
    "amx": (torch.bfloat16,),
    "neon": (torch.bfloat16,),
}


def layout(dtype: torch.dtype) -> str:
    """The name of the packed layout of `dtype` weights at the running level."""
    return _native._C.gemm_layout(_native._code_of(dtype))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """The running level's layout of a weight [N, K] (a flat tensor of the weight's dtype)."""
    assert weight.dim() == 2
    code = _native._code(weight, "weight")
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    n, k = weight.shape
    # huge pages: a GEMM streams the packed weights, and in 4 KiB pages it pays a TLB miss
    # every 4 KiB (hugepages.py)
    out = hugepages.empty(_native._C.gemm_packed_elems(n, k, code), dtype=weight.dtype)
    _native._C.gemm_pack(out.data_ptr(), weight.data_ptr(), weight.stride(0), n, k, code, torch.get_num_threads())
    return out


def linear(
    x: torch.Tensor, w_packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ weight.T (+ bias) in the weight's dtype, fp32 sums; x [..., K] (rows may be
    strided), w_packed = `pack(weight)` of the [out_features, K] weight."""
    k, n = x.shape[-1], out_features
    code = _native._code(w_packed, "packed weight")
    assert x.dtype == w_packed.dtype, f"the packed GEMM takes {w_packed.dtype} x, not {x.dtype}"
    assert w_packed.numel() == _native._C.gemm_packed_elems(n, k, code), (
        f"packed weight does not fit x {tuple(x.shape)}"
    )
    x2, bias, bias_ptr = _native.linear_operands(x, n, bias)
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    _native._C.gemm(
        y.data_ptr(),
        n,
        x2.data_ptr(),
        x2.stride(0),
        w_packed.data_ptr(),
        bias_ptr,
        m,
        n,
        k,
        code,
        torch.get_num_threads(),
    )
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)
