"""Mixture-of-experts experts (octavo.platform.ops' `fused_moe`) in two launches: one grouped
GEMM for every expert's gate and up projections (with the activation fused), one for the down
projections (with the routing weight fused).

The (token, choice) pairs are sorted by expert and each expert's run is padded to a multiple of
BLOCK_M rows, so that every program of a launch works on rows of one expert and reads that
expert's weights once per tile, whatever the batch: a decode step of one token reads each of
its top-k experts' weights once (the weight bytes are the floor), a prefill chunk of thousands
of tokens runs tensor-core tiles of BLOCK_M rows per expert. The sort is torch ops with no host
sync (the launch grid is the most blocks any routing can need: pairs / BLOCK_M + one partial
block per expert hit), so a decode step can be captured in a CUDA graph; blocks past the last
used one return at once.

Rounding as the definition: each GEMM accumulates in float32 and rounds to the inputs' dtype,
the activation runs in float32 on the rounded gate and up and rounds once; the down output,
rounded, times the float32 weight is summed over the choices in float32 and rounded once.
float32 inputs multiply in IEEE float32 (tf32 would miss the definition by ~1e-3).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo.platform.ops import MOE_ACTIVATIONS
from octavo_triton import interpreting

#: activation ids of the gate/up kernel, by the names of octavo.platform.ops.MOE_ACTIVATIONS
_ACTIVATION_IDS = {"silu": 0, "gelu_pytorch_tanh": 1}
assert set(_ACTIVATION_IDS) == set(MOE_ACTIVATIONS)


def _tiles(num_pairs: int, num_experts: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N of gate/up, BLOCK_N of down, BLOCK_K, num_warps) for a launch.

    Few rows per expert (decodes: a batch of 1 gives each chosen expert one row): the smallest
    row block tl.dot takes and narrow column tiles, so that the few experts' weights are spread
    over enough programs to fill the GPU; many rows (prefill chunks, batches of 64+): 64-row
    tiles that reuse each weight tile 64 times. Chosen from the shapes, not timed yet on the
    H200 (plugin-cuda/scripts/moe_gpu.sh measures them)."""
    if num_pairs <= 2 * num_experts:
        return 16, 32, 64, 128, 4
    return 64, 64, 128, 64, 4


@triton.jit
def _mma(acc, a, w, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ w, in IEEE float32 for float32 inputs."""
    if UPCAST:  # the interpreter's tl.dot multiplies bfloat16 bit patterns (octavo_triton.interpreting)
        a = a.to(tl.float32)
        w = w.to(tl.float32)
    if IEEE:
        acc += tl.dot(a, w, input_precision="ieee")
    else:
        acc += tl.dot(a, w)
    return acc


@triton.jit
def _gate_up_kernel(
    x, w13, inter, sorted_pairs, block_expert, top_k, hidden, inter_size,
    stride_xt, stride_we, stride_wn, stride_it,
    ACTIVATION: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    e = tl.load(block_expert + b)
    if e >= 0:
        pairs = tl.load(sorted_pairs + b * BLOCK_M + tl.arange(0, BLOCK_M))
        valid = pairs >= 0
        tokens = tl.where(valid, pairs // top_k, 0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < inter_size
        w_gate = w13 + e.to(tl.int64) * stride_we + cols[None, :].to(tl.int64) * stride_wn
        w_up = w_gate + inter_size * stride_wn
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < hidden
            a = tl.load(x + tokens[:, None] * stride_xt + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
            w_ok = k_ok[:, None] & col_ok[None, :]
            wg = tl.load(w_gate + ks[:, None], mask=w_ok, other=0.0)  # [BLOCK_K, BLOCK_N]
            wu = tl.load(w_up + ks[:, None], mask=w_ok, other=0.0)
            acc_g = _mma(acc_g, a, wg, IEEE, UPCAST)
            acc_u = _mma(acc_u, a, wu, IEEE, UPCAST)
        dtype = inter.dtype.element_ty
        g = acc_g.to(dtype).to(tl.float32)  # each GEMM's output rounds, as a linear layer's
        u = acc_u.to(dtype).to(tl.float32)
        if ACTIVATION == 0:
            h = g * tl.sigmoid(g) * u
        else:  # gelu, tanh approximation: tanh(z) = 2 sigmoid(2z) - 1
            z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            h = g * tl.sigmoid(2.0 * z) * u
        out = inter + pairs[:, None].to(tl.int64) * stride_it + cols[None, :]
        tl.store(out, h.to(dtype), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    inter, w2, out, sorted_pairs, block_expert, weights, hidden, inter_size,
    stride_it, stride_we, stride_wn, stride_ot,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    e = tl.load(block_expert + b)
    if e >= 0:
        pairs = tl.load(sorted_pairs + b * BLOCK_M + tl.arange(0, BLOCK_M))
        valid = pairs >= 0
        rows = tl.where(valid, pairs, 0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < hidden
        w_rows = w2 + e.to(tl.int64) * stride_we + cols[None, :].to(tl.int64) * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, inter_size, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < inter_size
            a = tl.load(inter + rows[:, None] * stride_it + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = _mma(acc, a, w, IEEE, UPCAST)
        weight = tl.load(weights + rows, mask=valid, other=0.0)
        y = acc.to(inter.dtype.element_ty).to(tl.float32) * weight[:, None]
        tl.store(out + rows[:, None] * stride_ot + cols[None, :], y, mask=valid[:, None] & col_ok[None, :])


def _sort_by_expert(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_pairs [num_blocks * block_m] int32: pair indices t * K + k grouped by expert, each
    expert's run padded with -1 to a multiple of block_m; block_expert [num_blocks] int32: the
    expert of each block, -1 past the last used one). Torch ops only, no host sync."""
    dev = ids.device
    flat = ids.reshape(-1).long()
    n = flat.numel()
    key = torch.where(flat >= 0, flat, num_experts)  # -1 (nowhere) sorts last, into a bin of its own
    order = torch.argsort(key, stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev).scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_experts]
    blocks = (counts + block_m - 1) // block_m
    block_end = torch.cumsum(blocks, 0)
    num_blocks = triton.cdiv(n, block_m) + min(num_experts, n)  # the most any routing needs
    sorted_key = key[order]
    e = sorted_key.clamp(max=num_experts - 1)
    dest = (block_end - blocks)[e] * block_m + torch.arange(n, device=dev) - (torch.cumsum(counts, 0) - counts)[e]
    dump = num_blocks * block_m  # where the pairs sent nowhere go (cut off below)
    dest = torch.where(sorted_key < num_experts, dest, dump)
    sorted_pairs = torch.full((dump + 1,), -1, dtype=torch.int32, device=dev)
    sorted_pairs[dest] = order.to(torch.int32)
    block_expert = torch.searchsorted(block_end, torch.arange(num_blocks, device=dev), right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_pairs[:dump], block_expert


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """See octavo.platform.ops.fused_moe: x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights
    [T, K] float32, topk_ids [T, K] (-1: nowhere) -> [T, H] in x's dtype."""
    t, k = topk_ids.shape
    num_experts, two_i, hidden = w13.shape
    inter_size = two_i // 2
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    n = t * k
    block_m, bn_up, bn_down, block_k, warps = _tiles(n, num_experts)
    sorted_pairs, block_expert = _sort_by_expert(topk_ids, num_experts, block_m)
    num_blocks = block_expert.numel()
    ieee, upcast = x.dtype == torch.float32, interpreting()
    inter = torch.empty(n, inter_size, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter_size, bn_up))](
        x, w13, inter, sorted_pairs, block_expert, k, hidden, inter_size,
        x.stride(0), w13.stride(0), w13.stride(1), inter.stride(0),
        ACTIVATION=_ACTIVATION_IDS[activation], IEEE=ieee, UPCAST=upcast,
        BLOCK_M=block_m, BLOCK_N=bn_up, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    out = torch.zeros(n, hidden, dtype=torch.float32, device=x.device)  # rows of pairs sent nowhere stay 0
    weights = topk_weights.reshape(-1).float().contiguous()
    _down_kernel[(num_blocks, triton.cdiv(hidden, bn_down))](
        inter, w2, out, sorted_pairs, block_expert, weights, hidden, inter_size,
        inter.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        IEEE=ieee, UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=bn_down, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    return out.view(t, k, hidden).sum(dim=1).to(x.dtype)
