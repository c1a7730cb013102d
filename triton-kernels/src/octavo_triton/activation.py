"""SiLU-and-mul: x [..., 2d] -> silu(x[..., :d]) * x[..., d:].

Same numbers as the torch default in half precision: silu is computed in float32
and rounded to x's dtype, then multiplied by up (in float32, rounded once).
"""

import torch
import triton
import triton.language as tl

from octavo_triton.dependent_launch import launch_options, wait_for_previous
from octavo_triton.tuning import Tuning, for_device


@triton.jit
def _silu_and_mul_kernel(out, x, d, stride_x, stride_o, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < d
    gate = tl.load(x + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x + row * stride_x + d + cols, mask=ok, other=0.0).to(tl.float32)
    ty = out.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(ty).to(tl.float32)
    tl.store(out + row * stride_o + cols, (act * up).to(ty), mask=ok)


def silu_and_mul(x: torch.Tensor, tuning: Tuning | None = None) -> torch.Tensor:
    """tuning: the launch parameters; default, the table's entry for x's device."""
    shape = x.shape
    d = shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device)
    if x2.shape[0] > 0 and d > 0:
        tuning = tuning or for_device(x.device)
        rows = tuning.rows
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(d, rows.silu_block))](
            out,
            x2,
            d,
            x2.stride(0),
            out.stride(0),
            BLOCK=rows.silu_block,
            num_warps=rows.silu_warps,
            **launch_options(tuning),
        )
    return out.view(*shape[:-1], d)
