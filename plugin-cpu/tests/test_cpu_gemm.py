"""octavo-cpu's packed GEMM (octavo_cpu.gemm: csrc/gemm_bf16.h, kernels_amx.cpp, gemm_fma.h)
against fp32 matmul at every ISA level this CPU runs, and the linear method that routes to it
(octavo_cpu.linear).

The reference is torch's matmul in fp32 on the same bf16 inputs: the kernel sums in fp32 and
rounds once to bf16, so the two differ by that rounding (and summation order). Shapes cover
SmolLM2-135M's linears and odd ones: ragged M (every tail of the 6-row tiles, across the
156-row L2 blocks and the threads' shares), N off the 64-column panels, odd K (the packed
pair's zero), and both ways the threads split the work: by column panels (up to 128 rows, and
for a weight too big for the L3) and by rows (past 128 rows).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from octavo.layers.linear import Linear
from octavo_cpu import _native, gemm
from octavo_cpu.device import CpuDevice
from octavo_cpu.linear import CpuLinearMethod

pytestmark = pytest.mark.skipif(not gemm.available(), reason="needs the native kernels")

SHAPES = {  # id: (K, N)
    "qkv": (576, 960),
    "o": (576, 576),
    "gate_up": (576, 3072),
    "down": (1536, 576),
    "k1": (1, 64),
    "odd": (33, 100),
    "n130": (64, 130),
    "k1535": (1535, 65),
    "n1": (7, 1),
}
ROWS = [1, 5, 9, 13, 47, 64, 100, 128, 129, 161, 300]


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


def _inputs(m, k, n, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * k**-0.5).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    return x, w, b


def _check(got, x, w, b):
    want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.dtype == x.dtype and got.shape == want.shape
    if x.dtype == torch.float32:  # fp32 summation order only
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    else:  # one rounding to bf16 (8 significant bits), plus fp32 summation order
        torch.testing.assert_close(got.double(), want, atol=1e-2, rtol=2**-7)


@pytest.fixture(params=_native.supported_isas() or ["missing"])
def isa(request):
    """Every ISA level this CPU runs, each with its own packed layout (weights packed inside)."""
    saved = _native.isa()
    _native.set_isa(request.param)
    yield request.param
    _native.set_isa(saved)


@pytest.mark.parametrize("m", [1, 5, 13, 47, 129])
@pytest.mark.parametrize("shape", ["qkv", "odd", "n130", "k1535", "n1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gemm_at_every_level(isa, dtype, shape, m, bias):
    """bf16 and fp32 weights at each level: the k-pair layout (vdpbf16ps; AMX tiles from 32
    rows with K a multiple of 32: qkv at 47 and 129 rows, the last block zero-padded) and the
    FMA panels (bf16 widened in registers), every tail of their tiles, both thread splits."""
    k, n = SHAPES[shape]
    x, w, b = _inputs(m, k, n, bias, seed=m * 7 + k + n)
    x, w, b = x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check(gemm.linear(x, gemm.pack(w), n, b), x, w, b)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gemm_matches_fp32(threads, shape, m, bias):
    k, n = SHAPES[shape]
    x, w, b = _inputs(m, k, n, bias, seed=m * 31 + k + n)
    _check(gemm.linear(x, gemm.pack(w), n, b), x, w, b)


@pytest.mark.parametrize("m", [3, 64])
def test_gemm_large_weight_splits_columns(threads, m):
    """lm_head-sized weights (> 8 MiB) split their panels over the threads."""
    x, w, _ = _inputs(m, 576, 8000, False, seed=5)
    _check(gemm.linear(x, gemm.pack(w), 8000), x, w, None)


def test_gemm_strided_rows_and_batch_dims():
    g = torch.Generator().manual_seed(6)
    wide = torch.randn(20, 300, generator=g).bfloat16()
    x = wide[:, 7:207]  # row stride 300
    w = (torch.randn(70, 200, generator=g) * 0.1).bfloat16()
    wp = gemm.pack(w)
    _check(gemm.linear(x, wp, 70), x, w, None)
    x3 = torch.randn(2, 11, 200, generator=g).bfloat16()
    got = gemm.linear(x3, wp, 70)
    assert got.shape == (2, 11, 70)
    _check(got.reshape(22, 70), x3.reshape(22, 200), w, None)


def _layer(w: torch.Tensor, b: torch.Tensor | None) -> Linear:
    """A core Linear on the CPU's linear method, loaded with w and b and processed as the
    runner does after loading."""
    layer = Linear(w.shape[1], w.shape[0], CpuLinearMethod(CpuDevice()), bias=b is not None)
    layer.to(w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    layer.method.process_weights_after_loading(layer)
    return layer


def test_weights_are_packed_once_at_load(monkeypatch):
    """process_weights_after_loading packs the weight and lets go of the [out, in] copy; the
    forwards pack nothing."""
    x, w, b = _inputs(16, 64, 96, True, seed=7)
    layer = _layer(w, b)
    assert layer.packed_weight is not None and layer.weight is None
    packs = []
    real = gemm.pack
    monkeypatch.setattr(gemm, "pack", lambda *a: packs.append(1) or real(*a))
    _check(layer(x), x, w, b)
    _check(layer(x[:1]), x[:1], w, b)
    assert packs == [], "a forward packed the weight again"


def test_a_tied_weight_stays_with_its_other_owner():
    """A tied lm_head's weight is the embedding: the linear lets go of it, the embedding keeps it."""
    x, w, _ = _inputs(5, 64, 96, False, seed=9)
    embed = nn.Parameter(w.clone(), requires_grad=False)
    layer = Linear(64, 96, CpuLinearMethod(CpuDevice()))
    layer.weight = embed
    layer.method.process_weights_after_loading(layer)
    assert torch.equal(embed, w)
    _check(layer(x), x, w, None)


def test_linear_method_routes_bf16_rows_to_the_gemm(monkeypatch):
    """CpuLinearMethod: the GEMM for bf16 at every row count (decode rows too) at every ISA
    level, packed in that level's layout; the GEMV or torch when it is switched off, and for
    fp32; a weight packed under one level refused under another."""
    x, w, b = _inputs(40, 96, 80, True, seed=8)
    calls, gemv_calls = [], []
    real, real_gemv = gemm.linear, _native.linear
    monkeypatch.setattr(gemm, "linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_native, "linear", lambda *a: gemv_calls.append(a[0].shape[0]) or real_gemv(*a))
    layer = _layer(w, b)
    _check(layer(x), x, w, b)
    _check(layer(x[:1]), x[:1], w, b)  # a decode row
    _check(layer(x[:4]), x[:4], w, b)
    assert calls == [1, 1, 1] and gemv_calls == []
    layer32 = _layer(w.float(), b.float())
    layer32(x.float())  # fp32: torch
    layer32(x[:4].float())  # fp32 decode rows: the GEMV
    assert gemv_calls == [4]
    monkeypatch.setattr(gemm, "ENABLED", False)
    layer = _layer(w, b)
    _check(layer(x), x, w, b)
    _check(layer(x[:4]), x[:4], w, b)
    assert gemv_calls == [4, 4]
    monkeypatch.setattr(gemm, "ENABLED", True)
    saved = _native.isa()
    packed_here = _layer(w, b)
    try:
        for level in _native.supported_isas():
            _native.set_isa(level)
            layer = _layer(w, b)
            assert layer.packed_weight is not None, f"{level}: bf16 weights not packed"
            _check(layer(x), x, w, b)
            _check(layer(x[:4]), x[:4], w, b)
            if gemm.layout(torch.bfloat16) != packed_here.packed_layout:
                with pytest.raises(RuntimeError, match="OCTAVO_CPU_ISA"):
                    packed_here(x)
    finally:
        _native.set_isa(saved)
    assert calls == [1, 1, 1] + [1, 1] * len(_native.supported_isas())
    assert gemv_calls == [4, 4]
