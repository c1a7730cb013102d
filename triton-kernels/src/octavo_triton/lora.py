"""Multi-LoRA shrink and expand (octavo.platform.ops' `lora_shrink` / `lora_expand`), every
adapter of a batch in one launch per op (per slice for expand).

SGMV without sorting: the grid is (token tile, adapter slot, ...), and a program works only on
the rows of its tile whose token uses its slot, doing nothing when there are none. A prefill's
tokens come in runs of one request (one slot), so most tiles hold one slot and run one
tensor-core product against that slot's A or B; a decode tile of 16 tokens from different
requests is visited once per slot in it. Shrink also splits the input features over programs
(float32 partial sums added atomically), so a decode step's few tiles still fill the GPU instead
of each program walking all of K alone. No host sync and no per-token copy of weights, so the
launches could be captured in a graph. Products accumulate in float32 (float32 inputs in IEEE
precision, not tf32) and round as the definitions say.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton import interpreting

BLOCK_T = 16  # token rows per program (tl.dot's smallest M)
BLOCK_K = 64  # input features per step of shrink's loop
K_SPLIT = 256  # input features per shrink program: a decode step's tiles x slots x splits fill the GPU
BLOCK_O = 64  # output features per expand program


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # the interpreter's tl.dot multiplies bfloat16 bit patterns (octavo_triton.interpreting)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit(do_not_specialize=["num_tokens"])  # one variant for every batch size
def _shrink_kernel(
    h, x, a, slots, num_tokens, in_features, stride_xt, stride_as,
    NR: tl.constexpr, BLOCK_NR: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
    K_SPLIT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """h[rows, :] += x[rows, this split's features] @ a[s] (every slice's rows of A, [N * R, I])
    for the tile's rows whose slot is s, in float32 (atomically: the splits of K add up)."""
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mine = tl.load(slots + rows, mask=rows < num_tokens, other=-1) == s
    if tl.max(mine.to(tl.int32), axis=0) > 0:
        nr = tl.arange(0, BLOCK_NR)
        k_first = tl.program_id(2) * K_SPLIT
        acc = tl.zeros((BLOCK_T, BLOCK_NR), dtype=tl.float32)
        a_rows = a + s.to(tl.int64) * stride_as + nr[:, None] * in_features
        for k0 in range(0, K_SPLIT, BLOCK_K):
            ks = k_first + k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(
                x + rows[:, None].to(tl.int64) * stride_xt + ks[None, :],
                mask=mine[:, None] & (ks[None, :] < in_features),
                other=0.0,
            )
            ak = tl.load(a_rows + ks[None, :], mask=(nr[:, None] < NR) & (ks[None, :] < in_features), other=0.0)
            acc += _dot(xk, tl.trans(ak), IEEE, UPCAST)
        out = h + rows[:, None].to(tl.int64) * NR + nr[None, :]
        tl.atomic_add(out, acc, mask=mine[:, None] & (nr[None, :] < NR))


@triton.jit(do_not_specialize=["num_tokens", "n", "start", "size"])
def _expand_kernel(
    y, h, b, slots, num_tokens, n, start, size, stride_yt, stride_ht, stride_hn, stride_bs, stride_br,
    RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mine = tl.load(slots + rows, mask=rows < num_tokens, other=-1) == s
    if tl.max(mine.to(tl.int32), axis=0) > 0:
        ranks = tl.arange(0, BLOCK_R)
        cols = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
        hv = tl.load(
            h + rows[:, None].to(tl.int64) * stride_ht + n * stride_hn + ranks[None, :],
            mask=mine[:, None] & (ranks[None, :] < RANK),
            other=0.0,
        )
        bv = tl.load(  # [rank, out]: this slice's columns of the slot's B (stored transposed)
            b + s.to(tl.int64) * stride_bs + ranks[:, None] * stride_br + start + cols[None, :],
            mask=(ranks[:, None] < RANK) & (cols[None, :] < size),
            other=0.0,
        )
        ty = y.dtype.element_ty
        delta = _dot(hv, bv, IEEE, UPCAST).to(ty)  # the product rounds to y's dtype, then the sum does
        out = y + rows[:, None].to(tl.int64) * stride_yt + start + cols[None, :]
        ok = mine[:, None] & (cols[None, :] < size)
        old = tl.load(out, mask=ok, other=0.0)
        tl.store(out, (old.to(tl.float32) + delta.to(tl.float32)).to(ty), mask=ok)


def _rank_block(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))  # tl.dot's smallest N and K


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """x [T, I], a [S, N, R, I] (x's dtype), slots [T] (-1: none) -> h [T, N, R] in x's dtype.

    Each program takes one K_SPLIT of the input features and every slice at once (A's rows
    [N * R]), so x is read once and a decode step's few tiles still fill the GPU; the splits'
    float32 sums add up atomically, rounded to x's dtype at the end."""
    num_slots, n, rank, in_features = a.shape
    x, a = x.contiguous(), a.contiguous()
    h = torch.zeros(x.shape[0], n * rank, dtype=torch.float32, device=x.device)
    if x.shape[0] > 0:
        grid = (triton.cdiv(x.shape[0], BLOCK_T), num_slots, triton.cdiv(in_features, K_SPLIT))
        _shrink_kernel[grid](
            h, x, a, slots, x.shape[0], in_features, x.stride(0), a.stride(0),
            NR=n * rank, BLOCK_NR=max(16, triton.next_power_of_2(n * rank)), BLOCK_T=BLOCK_T, BLOCK_K=BLOCK_K,
            K_SPLIT=K_SPLIT, IEEE=x.dtype == torch.float32, UPCAST=interpreting(),
        )  # fmt: skip
    return h.view(-1, n, rank).to(x.dtype)


def lora_expand(
    y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
) -> torch.Tensor:
    """y [T, O] += each token's h[t, n] @ b[slot, :, columns of slice n], in place (b [S, R, O])."""
    num_slots, rank, _ = b.shape
    assert y.stride(-1) == 1, "y's rows must be contiguous"
    h, b = h.contiguous(), b.contiguous()
    if y.shape[0] == 0:
        return y
    start = 0
    for n, size in enumerate(slice_sizes):
        grid = (triton.cdiv(y.shape[0], BLOCK_T), num_slots, triton.cdiv(size, BLOCK_O))
        _expand_kernel[grid](
            y, h, b, slots, y.shape[0], n, start, size, y.stride(0), h.stride(0), h.stride(1), b.stride(0),
            b.stride(1), RANK=rank, BLOCK_R=_rank_block(rank), BLOCK_T=BLOCK_T, BLOCK_O=BLOCK_O,
            IEEE=h.dtype == torch.float32, UPCAST=interpreting(),
        )  # fmt: skip
        start += size
    return y
