"""Skinny linear for decode: y[M, N] = x[M, K] @ w[N, K]^T (+ b), M a handful of rows.

A decode step of one request reads every weight once and does 2 FLOPs per weight: it is
pure bandwidth. cuBLAS's kernels for M = 1 leave part of the H100's bandwidth unused
(measured in plugin-cuda/scripts/gemv_bench.py), so this kernel streams w in wide,
coalesced tiles: a program owns BLOCK_N output features and walks K in BLOCK_K steps,
multiplying elementwise into a [BLOCK_N, BLOCK_K] float32 accumulator that is reduced
once at the end (no reduction inside the loop). One program per (N block, row), the row
index fastest, so the M programs of one weight tile run side by side and all but the
first read it from L2. (A 1-D grid: the second grid dimension stops at 65535 programs.)
"""

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting
from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.tuning import Tuning, for_device


@triton.jit
def _gemv_step(acc, w_rows, x_row, k0, K, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """acc += one [BLOCK_N, BLOCK_K] tile of w times x's matching slice."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if EVEN_K:
        wt = tl.load(w_rows + offs_k[None, :], eviction_policy="evict_first")
        xv = tl.load(x_row + offs_k)
    else:
        ok = offs_k < K
        wt = tl.load(w_rows + offs_k[None, :], mask=ok[None, :], other=0.0, eviction_policy="evict_first")
        xv = tl.load(x_row + offs_k, mask=ok, other=0.0)
    return acc + wt.to(tl.float32) * xv.to(tl.float32)[None, :]


@triton.jit(do_not_specialize=["M", "N", "K", "stride_x", "stride_y"])
def _gemv_kernel(
    y,
    x,
    w,
    b,
    M,
    N,
    K,
    stride_x,
    stride_w,
    stride_y,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    m = (pid % M).to(tl.int64)
    offs_n = (pid // M) * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows past N re-read row N - 1 (valid memory) and are not stored: no mask on w's loads
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    w_rows = w + rows[:, None] * stride_w
    x_row = x + m * stride_x
    # the first weight tile is loaded before waiting for the kernel that wrote x (weights are
    # never written during a step): it streams while that kernel drains
    offs_k = tl.arange(0, BLOCK_K)
    if EVEN_K:
        wt = tl.load(w_rows + offs_k[None, :], eviction_policy="evict_first")
    else:
        wt = tl.load(w_rows + offs_k[None, :], mask=offs_k[None, :] < K, other=0.0, eviction_policy="evict_first")
    wait_for_previous(PDL)
    xv = tl.load(x_row + offs_k, mask=offs_k < K, other=0.0)
    acc = wt.to(tl.float32) * xv.to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        acc = _gemv_step(acc, w_rows, x_row, k0, K, BLOCK_K, EVEN_K)
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b + rows).to(tl.float32)
    tl.store(y + m * stride_y + offs_n, out.to(y.dtype.element_ty), mask=offs_n < N)


def pick_blocks(n: int, k: int, tuning: Tuning) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an N x K weight."""
    g = tuning.gemv
    for most, block_n, block_k, warps in g.small:
        if n * k <= most:
            return block_n, min(block_k, triton.next_power_of_2(max(k, 16))), warps
    return g.block_n, min(g.max_block_k, triton.next_power_of_2(max(k, 16))), g.num_warps


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    blocks: tuple[int, int, int] | None = None,
    tuning: Tuning | None = None,  # default: the table's entry for x's device
) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T (+ bias[N]) with float32 accumulation, in x's dtype."""
    k = x.shape[-1]
    n = weight.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m and n:
        tuning = tuning or for_device(x.device)
        block_n, block_k, warps = blocks or pick_blocks(n, k, tuning)
        if interpreting():
            block_k = min(block_k, 64)
        _gemv_kernel[(m * triton.cdiv(n, block_n),)](
            y,
            x2,
            weight,
            bias if bias is not None else weight,
            m,
            n,
            k,
            x2.stride(0),
            weight.stride(0),
            y.stride(0),
            HAS_BIAS=bias is not None,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            EVEN_K=k % block_k == 0,
            num_warps=warps,
            **launch_options(tuning),
        )
    return y.view(*x.shape[:-1], n)
