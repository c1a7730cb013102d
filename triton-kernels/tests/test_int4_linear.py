"""The INT4 weight-only Triton kernels (octavo_triton.int4_linear) against the kit's reference
dequantization (octavo_plugin_kit.reference_quant), over group sizes, act-order, zero points
and row counts on both sides of the GEMV / GEMM switch.

On a GPU (DEVICE cuda) they run as they are; on a CPU `test_under_interpreter` re-runs this
file with TRITON_INTERPRET=1 (set before triton is imported) at small shapes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

reference_quant = pytest.importorskip("octavo_plugin_kit.reference_quant", reason="the reference is the kit's")
from octavo.quantization.scheme import QuantScheme  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if HAS_TRITON and not INTERPRET and torch.cuda.is_available() else "cpu"
kernels = pytest.mark.skipif(
    not (DEVICE == "cuda" or (INTERPRET and HAS_TRITON)),
    reason="needs a GPU, or TRITON_INTERPRET=1 with triton installed (test_under_interpreter runs it so)",
)
#: the interpreter is slow: small widths there, real ones on a GPU
K, N = (4096, 1024) if DEVICE == "cuda" else (256, 48)
ROWS = [1, 3, 8, 9, 64, 300] if DEVICE == "cuda" else [1, 3, 9, 70]


def _layer(scheme: QuantScheme, g: torch.Generator) -> dict[str, torch.Tensor]:
    groups = scheme.groups(K)
    t = {
        "qweight": torch.randint(0, 256, (N, K // 2), generator=g, dtype=torch.uint8),
        "scales": torch.rand(N, groups, generator=g) * (0.25 / K**0.5),
    }
    if scheme.zero_point:
        t["zeros"] = torch.randint(0, 16, (N, groups), generator=g, dtype=torch.uint8)
    if scheme.act_order:
        assert scheme.group_size is not None
        perm = torch.randperm(K, generator=g)
        t["g_idx"] = torch.empty(K, dtype=torch.int32)
        t["g_idx"][perm] = (torch.arange(K) // scheme.group_size).to(torch.int32)
    return t


SCHEMES = [
    QuantScheme("int4", group_size=32, zero_point=True),
    QuantScheme("int4", group_size=128),
    QuantScheme("int4", group_size=128, zero_point=True, act_order=True),
    QuantScheme("int4", group_size=None, zero_point=True),
]


@kernels
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.describe().replace(" ", ""))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int4_linear_matches_the_reference(scheme, rows, dtype):
    from octavo_triton.int4_linear import int4_linear

    g = torch.Generator().manual_seed(rows * 7 + (scheme.group_size or 1))
    t = _layer(scheme, g)
    x = torch.randn(rows, K, generator=g).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype) * 0.1 if rows % 2 else None
    dev = {k: v.to(DEVICE) for k, v in t.items()}
    got = int4_linear(
        x.to(DEVICE),
        dev["qweight"],
        dev["scales"],
        dev.get("zeros"),
        dev.get("g_idx"),
        scheme.group_size,
        None if bias is None else bias.to(DEVICE),
    )
    want = reference_quant.quantized_linear(x.float(), scheme, t, None if bias is None else bias.float())
    assert got.dtype == dtype and got.shape == (rows, N)
    # inputs of x's dtype; the GEMM also rounds the dequantized weights to it for tensor cores
    torch.testing.assert_close(got.float().cpu(), want, atol=3e-2, rtol=3e-2)


def test_under_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so run in a fresh process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if INTERPRET or DEVICE == "cuda":
        pytest.skip("this process already runs the kernels")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
