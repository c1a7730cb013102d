"""RMSNorm, optionally fused with the residual add that precedes it.

Same numbers as `Platform.rms_norm`: the sum x + residual is rounded to x's dtype
(it becomes the residual stream), the statistics are float32, the normalised row is
rounded to x's dtype before the weight multiplies it (as Hugging Face's Llama does),
and the product takes the promoted dtype of weight and x. One program per row: a
whole row (hidden size <= 16384 here) fits one block, so the row is read once.
"""

import torch
import triton
import triton.language as tl

from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.tuning import Tuning, for_device


@triton.jit
def _rms_norm_kernel(
    out,
    res_out,
    x,
    residual,
    weight,
    n_cols,
    eps,
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    xv = tl.load(x + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        # add in float32 and round once, as torch does for half-precision tensors
        rv = tl.load(residual + row * stride_r + cols, mask=ok, other=0.0)
        xv = (xv.to(tl.float32) + rv.to(tl.float32)).to(res_out.dtype.element_ty)
        tl.store(res_out + row * stride_ro + cols, xv, mask=ok)
    xf = xv.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    normed = (xf * rstd).to(xv.dtype).to(tl.float32)
    w = tl.load(weight + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out + row * stride_o + cols, (normed * w).to(out.dtype.element_ty), mask=ok)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    tuning: Tuning | None = None,  # default: the table's entry for x's device
):
    shape = x.shape
    n = shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if residual is not None:
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        # torch's x + residual promotes mixed dtypes, and the norm then runs in that dtype
        x_dtype = torch.promote_types(x.dtype, r2.dtype)
        res_out = torch.empty(x2.shape, dtype=x_dtype, device=x.device)
    else:
        x_dtype = x.dtype
        r2 = res_out = x2  # unused
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x_dtype), device=x.device)
    block = triton.next_power_of_2(n)
    if x2.shape[0] > 0:
        tuning = tuning or for_device(x.device)
        rows = tuning.rows
        _rms_norm_kernel[(x2.shape[0],)](
            out,
            res_out,
            x2,
            r2,
            weight,
            n,
            eps,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            res_out.stride(0),
            HAS_RESIDUAL=residual is not None,
            BLOCK=block,
            num_warps=min(rows.norm_max_warps, max(1, block // rows.norm_cols_per_warp)),
            **launch_options(tuning),
        )
    out = out.view(shape)
    return out if residual is None else (out, res_out.view(shape))
