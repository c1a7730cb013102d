"""Conformance of the dense kernels: the linear method, and the fused ops (rms_norm,
rotary, silu_and_mul, sample, apply_token_bitmask) through `platform.ops`.

These have core defaults, so a platform that keeps them passes trivially; the
checks matter once a vendor swaps in its own kernels. Shapes cover a decode (one
token), an odd token count, and the head-shaped inputs the layers pass (q/k norm).
"""

from __future__ import annotations

import pytest
import torch

from octavo.layers.linear import Linear
from octavo_plugin_kit import reference
from octavo_plugin_kit.conformance.checks import (
    DTYPE_NAMES,
    DTYPES,
    assert_close,
    call,
    generator_for,
    label,
    require_dtype,
)
from octavo_plugin_kit.inputs import make_cos_sin_cache

dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)


def _randn(*shape, generator, dtype, dev, scale=1.0):
    return (torch.randn(*shape, generator=generator) * scale).to(dtype).to(dev)


@pytest.mark.octavo_kernel("linear")
@dtype_param
@pytest.mark.parametrize(
    "tokens,in_features,out_features,bias",
    [
        (1, 64, 128, True),
        (37, 256, 96, False),
        (128, 896, 1152, True),
    ],
    ids=["decode", "odd", "large"],
)
def test_linear(octavo_platform, tokens, in_features, out_features, bias, dtype):
    """The linear method's three calls on a real `octavo.layers.linear.Linear`, as the
    runner makes them: create_weights (building the layer on the device), the loader's
    copy into the parameters, process_weights_after_loading, then apply (the forward)."""
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("linear", tokens=tokens, in_features=in_features, out_features=out_features, bias=bias, dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    x = _randn(tokens, in_features, generator=g, dtype=dtype, dev=dev)
    # weights scaled like a trained layer, so outputs stay O(1) at every width
    w = _randn(out_features, in_features, generator=g, dtype=dtype, dev=dev, scale=in_features**-0.5)
    b = _randn(out_features, generator=g, dtype=dtype, dev=dev) if bias else None
    layer = call("linear", case, _loaded_linear, p.linear, w, b)
    out = call("linear", case, layer, x.clone())
    ref = reference.linear(x.float().cpu(), w.float().cpu(), None if b is None else b.float().cpu())
    assert_close(case, out, ref, dtype)


def _loaded_linear(method, w: torch.Tensor, b: torch.Tensor | None) -> Linear:
    """A Linear built, loaded and processed as core's runner does it for a model."""
    out_features, in_features = w.shape
    with torch.device(w.device):
        layer = Linear(in_features, out_features, method, bias=b is not None)
    layer.to(dtype=w.dtype)
    loaded = dict(layer.named_parameters())
    missing = {"weight"} | ({"bias"} if b is not None else set())
    if not missing <= loaded.keys():
        raise AssertionError(f"create_weights registered {sorted(loaded)}; the loader fills {sorted(missing)}")
    with torch.no_grad():
        loaded["weight"].copy_(w)
        if b is not None:
            loaded["bias"].copy_(b)
    method.process_weights_after_loading(layer)
    return layer


@pytest.mark.octavo_kernel("rms_norm")
@dtype_param
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", [(1, 64), (37, 896), (16, 4096), (5, 8, 128)], ids=lambda s: "x".join(map(str, s)))
def test_rms_norm(octavo_platform, shape, with_residual, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    eps = 1e-6
    case = label("rms_norm", shape=list(shape), residual=with_residual, dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    x = _randn(*shape, generator=g, dtype=dtype, dev=dev, scale=2.0)
    weight = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(dtype).to(dev)
    residual = _randn(*shape, generator=g, dtype=dtype, dev=dev) if with_residual else None
    # inputs are cloned: a fused kernel may update x or residual in place
    args = (x.clone(), weight, eps) + ((residual.clone(),) if with_residual else ())
    out = call("rms_norm", case, p.ops.rms_norm, *args)
    ref = reference.rms_norm(
        x.float().cpu(), weight.float().cpu(), eps, residual.float().cpu() if with_residual else None
    )
    if not with_residual:
        assert_close(case, out, ref, dtype)
        return
    if not (isinstance(out, tuple) and len(out) == 2):
        pytest.fail(
            f"{case}: with a residual, must return (normed, x + residual), got {type(out).__name__}", pytrace=False
        )
    assert_close(case + " normed", out[0], ref[0], dtype)
    assert_close(case + " residual", out[1], ref[1], dtype)


@pytest.mark.octavo_kernel("rotary")
@dtype_param
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5], ids=["full", "partial"])
@pytest.mark.parametrize("head_dim", (64, 128, 80), ids=lambda d: f"hd{d}")
def test_rotary(octavo_platform, head_dim, rotary_fraction, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    rot_dim = int(head_dim * rotary_fraction)
    tokens, num_heads, num_kv_heads, max_pos = 37, 8, 2, 4096
    case = label("rotary", head_dim=head_dim, rot_dim=rot_dim, tokens=tokens, dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    q = _randn(tokens, num_heads, head_dim, generator=g, dtype=dtype, dev=dev)
    k = _randn(tokens, num_kv_heads, head_dim, generator=g, dtype=dtype, dev=dev)
    positions = torch.randint(0, max_pos, (tokens,), generator=g)
    positions[:3] = torch.tensor([0, 1, max_pos - 1])  # the ends of the table
    cache = make_cos_sin_cache(rot_dim, max_pos, base=500000.0)
    out = call("rotary", case, p.ops.rotary, q.clone(), k.clone(), positions.to(dev), cache.to(dev))
    if not (isinstance(out, tuple) and len(out) == 2):
        pytest.fail(f"{case}: must return (q, k), got {type(out).__name__}", pytrace=False)
    ref_q, ref_k = reference.rotary(q.float().cpu(), k.float().cpu(), positions, cache)
    assert_close(case + " q", out[0], ref_q, dtype)
    assert_close(case + " k", out[1], ref_k, dtype)


@pytest.mark.octavo_kernel("silu_and_mul")
@dtype_param
@pytest.mark.parametrize("shape", [(1, 128), (37, 2816), (3, 5, 192)], ids=lambda s: "x".join(map(str, s)))
def test_silu_and_mul(octavo_platform, shape, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("silu_and_mul", shape=list(shape), dtype=dtype)
    g, dev = generator_for(case), p.device.torch_device()
    x = _randn(*shape, generator=g, dtype=dtype, dev=dev, scale=3.0)
    out = call("silu_and_mul", case, p.ops.silu_and_mul, x.clone())
    assert_close(case, out, reference.silu_and_mul(x.float().cpu()), dtype)


@pytest.mark.octavo_kernel("sample")
@pytest.mark.parametrize(
    "rows,vocab,temperature,banned",
    [
        (1, 100, None, 0.0),
        (16, 4099, 0.7, 0.5),  # vocab off every vector and block width; half the tokens at -inf
        (64, 49152, 1.3, 0.0),
        (4, 2048, None, 0.999),  # a couple of tokens left
    ],
    ids=["one-row", "ragged-masked", "smollm2-vocab", "few-left"],
)
def test_sample(octavo_platform, rows, vocab, temperature, banned):
    """The inverse CDF at u: the token k with cdf[k - 1] <= u < cdf[k], where u also sits
    at the ends of [0, 1) and on the edge of a most likely token."""
    p = octavo_platform
    case = label("sample", rows=rows, vocab=vocab, temperature=temperature, banned=banned)
    g, dev = generator_for(case), p.device.torch_device()
    logits = torch.randn(rows, vocab, generator=g) * 4.0
    if banned:
        mask = torch.rand(rows, vocab, generator=g) < banned
        mask[torch.arange(rows), torch.randint(0, vocab, (rows,), generator=g)] = False  # one token stays
        logits = logits.masked_fill(mask, float("-inf"))
    temps = None if temperature is None else torch.full((rows,), temperature) + torch.rand(rows, generator=g) * 0.2
    u = torch.rand(rows, generator=g)
    u[0] = 0.0
    if rows > 1:
        u[1] = 1.0 - 2.0**-24  # the largest float32 below 1
    cdf = reference.sample_cdf(logits, temps)
    if rows > 2:  # just past the end of the most likely token's interval
        top = int(logits[2].argmax())
        u[2] = float(cdf[2, top]) + 1e-6 if float(cdf[2, top]) + 1e-6 < 1.0 else 0.5
    out = call("sample", case, p.ops.sample, logits.to(dev), None if temps is None else temps.to(dev), u.to(dev))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rows,):
        pytest.fail(f"{case}: expected a tensor of {rows} token ids, got {out!r}", pytrace=False)
    tokens = out.cpu().long()
    tol = 1e-5  # float32 sums over the vocabulary in any order
    for i, k in enumerate(tokens.tolist()):
        if not 0 <= k < vocab:
            pytest.fail(f"{case}: row {i} drew token {k}, outside the vocabulary of {vocab}", pytrace=False)
        if logits[i, k] == float("-inf"):
            pytest.fail(f"{case}: row {i} drew token {k}, whose logit is -inf", pytrace=False)
        lo = float(cdf[i, k - 1]) if k > 0 else 0.0
        hi = float(cdf[i, k])
        if not lo - tol <= float(u[i]) < hi + tol:
            want = int(torch.searchsorted(cdf[i], torch.tensor([float(u[i])], dtype=torch.float64), right=True))
            pytest.fail(
                f"{case}: row {i} at u={float(u[i]):.7f} drew token {k} (cdf {lo:.7f}..{hi:.7f}); "
                f"the inverse CDF gives {want}",
                pytrace=False,
            )


@pytest.mark.octavo_kernel("apply_token_bitmask")
@pytest.mark.parametrize(
    "rows,vocab,allowed",
    [(1, 100, 0.5), (5, 1000, 0.01), (3, 4099, 1.0), (2, 64, 0.0)],
    ids=["one-row", "few-allowed", "all-allowed-ragged", "none-allowed"],
)
def test_apply_token_bitmask(octavo_platform, rows, vocab, allowed):
    """Structured outputs' mask: banned tokens become -inf, the others keep their logits
    exactly; a vocabulary that is not a multiple of 32 leaves the last word's spare bits unused."""
    p = octavo_platform
    case = label("apply_token_bitmask", rows=rows, vocab=vocab, allowed=allowed)
    g, dev = generator_for(case), p.device.torch_device()
    logits = torch.randn(rows, vocab, generator=g)
    words = -(-vocab // 32)
    bits = torch.rand(rows, words * 32, generator=g) < allowed
    # pack 32 booleans per int32 word (bit k of a word: token 32 * word + k)
    weights = torch.tensor([1 << k for k in range(32)], dtype=torch.int64)
    packed = (bits.view(rows, words, 32).long() * weights).sum(-1)
    bitmask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    out = call("apply_token_bitmask", case, p.ops.apply_token_bitmask, logits.to(dev), bitmask.to(dev))
    want = reference.apply_token_bitmask(logits, bitmask)
    if not torch.equal(out.cpu().float(), want):
        bad = (out.cpu().float() != want).nonzero()[:5].tolist()
        pytest.fail(f"{case}: differs from the reference at (row, token) {bad}", pytrace=False)
