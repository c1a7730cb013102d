"""octavo_triton's fused_moe against the plugin kit's float32 reference (octavo_plugin_kit.reference_moe),
through octavo-cuda's ops as the models call it: both tile shapes (a few rows per expert as in a
decode, many as in a prefill chunk), ids of -1, both activations, three dtypes.

On a GPU these run directly, at real MoE widths too; on a CPU `test_under_interpreter` re-runs
this file with TRITON_INTERPRET=1 (set before triton is imported) at small shapes, as
test_triton_kernels does. The interpreter rounds float32 to bfloat16 by truncation, so bf16
gets twice the kit's tolerance there."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

reference_moe = pytest.importorskip("octavo_plugin_kit.reference_moe", reason="the reference is the plugin kit's")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and not INTERPRET and torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2 if ON_GPU else 4e-2}

kernels = pytest.mark.skipif(not (ON_GPU or (INTERPRET and HAS_TRITON)), reason="needs a GPU, or TRITON_INTERPRET=1")

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
CASES = [  # (experts, top_k, tokens, hidden, intermediate), dtype, activation
    ((8, 2, 1, 64, 48), F32, "silu"),  # a decode: few rows per expert, the narrow tiles
    ((8, 2, 1, 64, 48), BF16, "silu"),
    ((16, 4, 3, 96, 80), F16, "gelu_pytorch_tanh"),  # widths off every tile
    ((8, 2, 70, 128, 64), BF16, "silu"),  # many rows per expert: the 64-row tiles
    ((4, 1, 130, 64, 32), F32, "gelu_pytorch_tanh"),
]
if ON_GPU:  # Qwen3-30B-A3B's and Mixtral's widths, every dtype
    CASES += [
        (shape, dtype, "silu")
        for shape in [(128, 8, 1, 2048, 768), (128, 8, 64, 2048, 768), (8, 2, 300, 4096, 1024)]
        for dtype in (F32, BF16, F16)
    ]


def _case(experts, top_k, tokens, hidden, inter, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) * hidden**-0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=g) * inter**-0.5).to(dtype)
    weights, ids = torch.topk(torch.randn(tokens, experts, generator=g).softmax(-1), top_k, dim=-1)
    ids[0, -1] = -1  # one choice sent nowhere, as expert parallelism pads
    return x, w13, w2, weights.float(), ids


def _ops():
    from octavo.platform import Device
    from octavo_triton.platform_parts.ops import TritonOps

    return TritonOps(Device())


@kernels
@pytest.mark.parametrize(
    "case,dtype,activation",
    CASES,
    ids=lambda v: "e{}-k{}-t{}-h{}-i{}".format(*v) if isinstance(v, tuple) else str(v).replace("torch.", ""),
)
def test_fused_moe_matches_the_reference(case, dtype, activation):
    x, w13, w2, weights, ids = _case(*case, dtype, seed=sum(case))
    dev = [t.to(DEVICE) for t in (x, w13, w2, weights, ids)]
    out = _ops().fused_moe(*dev, activation).cpu()
    want = reference_moe.fused_moe(x, w13, w2, weights, ids, activation).float()
    assert out.dtype == dtype and out.shape == want.shape
    tol = TOL[dtype]
    err = (out.float() - want).abs()
    assert bool((err <= tol + tol * want.abs()).all()), f"max abs error {err.max():.3g}"


@pytest.mark.skipif(ON_GPU or INTERPRET or not HAS_TRITON, reason="the kernels run directly in this process")
def test_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
