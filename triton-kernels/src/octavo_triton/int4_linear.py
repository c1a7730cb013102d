"""INT4 weight-only linear: y[M, N] = x[M, K] @ dequant(w)[N, K]^T, w in the canonical int4
layout of octavo.quantization.scheme (GPTQ, AWQ and compressed-tensors checkpoints are
converted to it at load): qweight uint8 [N, K / 2] holding input 2j in the low nibble of byte
j and 2j + 1 in the high one, scales [N, G], optional zeros uint8 [N, G] (else 8), and with
act-order g_idx int32 [K] (input -> group; else input // group_size).

Both kernels read a byte once for its two inputs: the even inputs of a K tile multiply the
low nibbles, the odd ones the high nibbles, so nothing is interleaved in registers. Each
nibble becomes (q - zero) * scale in float32 from its group's scale and zero.

- `_int4_gemv_kernel` (decode, a few rows): a program owns BLOCK_N outputs of one row of x
  and walks K, accumulating elementwise in a [BLOCK_N, BLOCK_K / 2] float32 tile reduced
  once at the end, like gemv.py: it streams the 4-bit weights, the bytes a decode must read.
- `_int4_gemm_kernel` (prefill, batch 64+): [BLOCK_M, BLOCK_N] tiles with tl.dot on the
  dequantized tile in x's dtype (tensor cores), float32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting

#: rows of x up to which the GEMV kernel runs (past it the GEMM's tiles reuse each weight tile)
GEMV_MAX_ROWS = 8


@triton.jit
def _dequant_tile(qw, scales, zeros, g_idx, offs_n, k_even, N, K, G, GROUP: tl.constexpr, ACT_ORDER: tl.constexpr,
                  HAS_ZEROS: tl.constexpr, HIGH: tl.constexpr):  # fmt: skip
    """float32 [BLOCK_N, BLOCK_K / 2]: the weights of inputs k_even (+1 for HIGH) of rows offs_n."""
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    k = k_even + HIGH
    ok = k < K
    byte = tl.load(qw + rows[:, None] * (K // 2) + (k_even // 2)[None, :], mask=ok[None, :], other=0)
    q = ((byte >> 4) if HIGH else (byte & 15)).to(tl.float32)
    if ACT_ORDER:
        g = tl.load(g_idx + k, mask=ok, other=0).to(tl.int64)
    else:
        g = (k // GROUP).to(tl.int64)
    s = tl.load(scales + rows[:, None] * G + g[None, :], mask=ok[None, :], other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(zeros + rows[:, None] * G + g[None, :], mask=ok[None, :], other=0).to(tl.float32)
    else:
        z = 8.0
    return (q - z) * s


@triton.jit
def _int4_gemv_kernel(y, x, qw, scales, zeros, g_idx, bias, M, N, K, G, stride_x, stride_y,
                      GROUP: tl.constexpr, ACT_ORDER: tl.constexpr, HAS_ZEROS: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    m = (pid % M).to(tl.int64)
    offs_n = (pid // M) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_K // 2], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_even = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        x_lo = tl.load(x + m * stride_x + k_even, mask=k_even < K, other=0.0).to(tl.float32)
        x_hi = tl.load(x + m * stride_x + k_even + 1, mask=k_even + 1 < K, other=0.0).to(tl.float32)
        w_lo = _dequant_tile(qw, scales, zeros, g_idx, offs_n, k_even, N, K, G, GROUP, ACT_ORDER, HAS_ZEROS, 0)
        w_hi = _dequant_tile(qw, scales, zeros, g_idx, offs_n, k_even, N, K, G, GROUP, ACT_ORDER, HAS_ZEROS, 1)
        acc += w_lo * x_lo[None, :] + w_hi * x_hi[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias + tl.minimum(offs_n, N - 1)).to(tl.float32)
    tl.store(y + m * stride_y + offs_n, out.to(y.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _int4_gemm_kernel(y, x, qw, scales, zeros, g_idx, bias, M, N, K, G, stride_x, stride_y,
                      GROUP: tl.constexpr, ACT_ORDER: tl.constexpr, HAS_ZEROS: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_m = tl.minimum(offs_m, M - 1).to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_even = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        x_lo = tl.load(x + rows_m[:, None] * stride_x + k_even[None, :], mask=(k_even < K)[None, :], other=0.0)
        x_hi = tl.load(x + rows_m[:, None] * stride_x + k_even[None, :] + 1, mask=(k_even + 1 < K)[None, :], other=0.0)
        w_lo = _dequant_tile(qw, scales, zeros, g_idx, offs_n, k_even, N, K, G, GROUP, ACT_ORDER, HAS_ZEROS, 0)
        w_hi = _dequant_tile(qw, scales, zeros, g_idx, offs_n, k_even, N, K, G, GROUP, ACT_ORDER, HAS_ZEROS, 1)
        if UPCAST:  # the interpreter's tl.dot multiplies bfloat16 bit patterns (see interpreting())
            x_lo, x_hi = x_lo.to(tl.float32), x_hi.to(tl.float32)
        acc = tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)), acc, input_precision=PRECISION)
        acc = tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + tl.minimum(offs_n, N - 1)).to(tl.float32)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y + offs_m[:, None] * stride_y + offs_n[None, :], acc.to(y.dtype.element_ty), mask=mask)


def int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    g_idx: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ dequant(qweight)^T (+ bias), in x's dtype (float32 accumulation)."""
    k = x.shape[-1]
    n, groups = scales.shape
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    dummy = scales  # pointer arguments a variant does not read
    args = (
        y,
        x2,
        qweight,
        scales,
        zeros if zeros is not None else dummy,
        g_idx if g_idx is not None else dummy,
        bias if bias is not None else dummy,
        m,
        n,
        k,
        groups,
        x2.stride(0),
        y.stride(0),
    )
    flags = dict(
        GROUP=group_size or k,
        ACT_ORDER=g_idx is not None,
        HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None,
    )
    block_k = min(256, triton.next_power_of_2(max(k, 32)))
    if m <= GEMV_MAX_ROWS:
        block_n = 32
        _int4_gemv_kernel[(triton.cdiv(n, block_n) * m,)](*args, **flags, BLOCK_N=block_n, BLOCK_K=block_k)
    else:
        block_m, block_n = (64, 64) if m >= 64 else (16, 64)
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=min(block_k, 128))
        # float32 in, float32 products (tl.dot's default rounds fp32 operands to tf32 on NVIDIA:
        # ~1e-3 off, measured on an H200 against the kit's reference); 16-bit: the target's default
        precision = "ieee" if x.dtype == torch.float32 else None
        _int4_gemm_kernel[grid](*args, **flags, **blocks, UPCAST=interpreting(), PRECISION=precision)
    return y.reshape(*x.shape[:-1], n)
