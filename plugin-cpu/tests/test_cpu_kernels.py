"""octavo-cpu's native kernels (plugin-cpu/csrc) against the reference ops.

Every kernel runs at every instruction-set level the CPU supports (generic, AVX2,
AVX-512, AVX-512 + BF16), over head sizes, GQA ratios, block sizes, ragged batches
that mix decodes, whole prompts and prefill chunks, and both dtypes. Paged attention
runs both of its kernels: "auto" (the blocked AVX-512 kernel where it applies, which
on the lower levels is the per-row one) and "rows" (the per-row kernel everywhere),
whole and with each item's keys split across units (split-K) and merged.
"""

from __future__ import annotations

import os

import pytest
import torch

from octavo.platform import AttentionSpec, FusedOps, ops
from octavo_cpu import _native
from octavo_cpu.attention import CpuAttention
from octavo_cpu.device import CpuDevice
from octavo_plugin_kit import reference as ref
from octavo_plugin_kit.inputs import make_forward_batch

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The reference ops are many tiny torch calls, which a second thread only slows down
    on a busy 2-core machine; the kernels then run single-threaded too, except in
    test_threads, which sets its own count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _isas() -> list[str]:
    return _native.supported_isas()  # every level this CPU can run, not just the default


@pytest.fixture(params=_isas() or ["missing"])
def isa(request):
    if os.environ.get("OCTAVO_CPU_NATIVE") == "0":
        pytest.skip("native kernels disabled by OCTAVO_CPU_NATIVE=0")
    assert _native.available(), f"the native extension did not import: {_native.IMPORT_ERROR}"
    saved = _native.isa()
    _native.set_isa(request.param)
    yield request.param
    _native.set_isa(saved)


# (seq_len, q_len) per request, decodes first as the runner orders them: decodes at
# block edges, a one-token prompt, a whole prompt, and prefill chunks behind a context
RAGGED = [(1, 1), (7, 1), (16, 1), (33, 1), (130, 1), (1, 1), (40, 40), (75, 19), (64, 3)]


def _batch(seqs, block_size, num_heads, num_kv_heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq_lens, q_lens = zip(*seqs)
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 3
    meta = make_forward_batch(seq_lens, q_lens, block_size, num_blocks, generator=g)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=g).to(dtype)
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    return q, kv, meta


KERNELS = ["auto", "rows"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_size", [8, 16, 32])  # 8: the blocked kernel's 32-key chunks span 4 blocks
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (16, 2), (9, 3)], ids=["mha", "gqa4", "gqa8", "smollm2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_paged_attention(isa, head_dim, heads, block_size, dtype, kernel):
    num_heads, num_kv_heads = heads
    q, kv, meta = _batch(RAGGED, block_size, num_heads, num_kv_heads, head_dim, dtype)
    scale = head_dim**-0.5
    out = torch.full_like(q, float("nan"))
    _native.paged_attention(
        out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale, q_tile=8, kernel=kernel
    )
    want = ref.attend(q.float(), kv.float(), meta, scale)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [(12, 12), (8, 2)], ids=["bert", "gqa4"])
@pytest.mark.parametrize("kv_splits", [0, 3])
def test_paged_attention_not_causal(isa, heads, dtype, kernel, kv_splits):
    """Encoders: every query sees its request's whole context (whole prompts, as the pooling
    engine schedules them, and chunks behind a context)."""
    seqs = [(1, 1), (40, 40), (75, 75), (130, 130), (64, 3), (97, 97)]
    q, kv, meta = _batch(seqs, 16, *heads, 32 if heads[0] == 12 else 64, dtype, seed=3)
    out = torch.full_like(q, float("nan"))
    scale = q.shape[-1] ** -0.5
    _native.paged_attention(
        out,
        q,
        kv,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        scale,
        q_tile=8,
        kernel=kernel,
        kv_splits=kv_splits,
        causal=False,
    )
    want = ref.attend(q.float(), kv.float(), meta, scale, causal=False)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [1, 5, 16, 40, 1000])
def test_paged_attention_sliding_window(isa, window, dtype, kernel):
    q, kv, meta = _batch(RAGGED, 16, 8, 2, 64, dtype, seed=1)
    out = torch.empty_like(q)
    _native.paged_attention(
        out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.125, window, q_tile=4, kernel=kernel
    )
    want = ref.attend(q.float(), kv.float(), meta, 0.125, window)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("q_tile", [1, 3, 16, 64])
@pytest.mark.parametrize("head_dim", [32, 80, 96, 256])  # tails of the vector loops; 32, 96 and 256 run blocked
def test_paged_attention_tiles_and_odd_head_dims(isa, q_tile, head_dim, kernel):
    q, kv, meta = _batch(RAGGED, 16, 6, 2, head_dim, torch.float32, seed=2)
    out = torch.empty_like(q)
    _native.paged_attention(
        out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.1, q_tile=q_tile, kernel=kernel
    )
    torch.testing.assert_close(out, ref.attend(q, kv, meta, 0.1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kv_splits", [2, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [None, 50])
def test_paged_attention_kv_splits(isa, kv_splits, dtype, window, kernel):
    """Split-K: every item's keys split into up to kv_splits units whose partial softmax
    states are merged; long decodes, chunks behind a long context, and items too short
    to split as many ways (and, with a window, splits that see nothing for some rows)."""
    seqs = RAGGED + [(700, 1), (333, 1), (500, 37), (97, 97)]
    q, kv, meta = _batch(seqs, 16, 9, 3, 64, dtype, seed=10)
    out = torch.full_like(q, float("nan"))
    _native.paged_attention(
        out,
        q,
        kv,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        0.125,
        window,
        q_tile=16,
        kv_splits=kv_splits,
        kernel=kernel,
    )
    want = ref.attend(q.float(), kv.float(), meta, 0.125, window)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_paged_attention_large_scores(isa, dtype, kernel):
    """Scores of std up to 8 (a peaked softmax) that jump from block to block (keys
    scaled 1-4x per block), so the running max keeps moving: the blocked kernel's
    rescaling steps. (fp32 tolerance 1e-4: scores this large carry rounding of ~1e-5
    into the exponentials whichever order sums them; a wrong rescale is off by O(1).)"""
    q, kv, meta = _batch(RAGGED + [(600, 1), (300, 45)], 16, 8, 2, 64, dtype, seed=11)
    g = torch.Generator().manual_seed(12)
    kv = kv.float()
    kv[0] *= 1 + 3 * torch.rand(kv.shape[1], 1, 1, 1, generator=g)
    kv = kv.to(dtype)
    out = torch.empty_like(q)
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.25, kernel=kernel)
    want = ref.attend(q.float(), kv.float(), meta, 0.25)
    tol = max(TOL[dtype], 1e-4)
    torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "q_dtype, kv_dtype",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
    ids=["fp32-q-bf16-kv", "bf16-q-fp32-kv"],
)
def test_paged_attention_strided_q_and_mixed_dtypes(isa, q_dtype, kv_dtype, kernel):
    """q as a view of a fused qkv tensor (row stride > heads * head_dim); q and cache of
    different dtypes."""
    _, kv, meta = _batch(RAGGED, 16, 8, 2, 64, kv_dtype, seed=3)
    qkv = torch.randn(meta.query_start_loc_cpu[-1], 12 * 64).to(q_dtype)
    q = qkv[:, : 8 * 64].unflatten(1, (8, 64))
    out = torch.empty(q.shape, dtype=q_dtype)
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.125, kernel=kernel)
    tol = TOL[q_dtype]
    torch.testing.assert_close(out.float(), ref.attend(q.float(), kv.float(), meta, 0.125), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "src, cache",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
    ids=["fp32", "bf16", "fp32-to-bf16"],
)
def test_write_kv(isa, src, cache):
    g = torch.Generator().manual_seed(4)
    kv = torch.randn(2, 10, 16, 3, 64, generator=g).to(cache)
    want = kv.clone()
    k = torch.randn(20, 3, 64, generator=g).to(src)
    v = torch.randn(20, 3, 64, generator=g).to(src)
    slots = torch.randperm(160, generator=g)[:20]
    slots[[3, 11]] = -1  # padding
    _native.write_kv(k, v, kv, slots)
    ref.write_kv(k, v, want, slots)
    assert torch.equal(kv, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(7, 576), (3, 100), (300, 576)])  # a tail; enough rows for threads
def test_rms_norm(isa, dtype, with_residual, shape):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    res = torch.randn(*shape, generator=g).to(dtype) if with_residual else None
    res_before = None if res is None else res.clone()
    got = _native.rms_norm(x, w, 1e-5, res)
    # the core's default: the residual sum and the normed row rounded as a bf16 model does
    want = FusedOps(CpuDevice()).rms_norm(x, w, 1e-5, res)
    spec = ref.rms_norm(x, w, 1e-5, res)
    if not with_residual:
        got, want, spec = (got,), (want,), (spec,)
    else:
        assert torch.equal(res, res_before), "the residual input must not change"
        assert torch.equal(got[1], want[1])
    for a, b, c in zip(got, want, spec):
        torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])
        torch.testing.assert_close(a.float(), c.float(), atol=TOL[dtype], rtol=TOL[dtype])


def _allocated_like(backend: CpuAttention, kv: torch.Tensor) -> torch.Tensor:
    """The backend's own cache (head-major storage behind the default shape) holding kv."""
    _, num_blocks, block_size, num_kv_heads, head_dim = kv.shape
    layer = AttentionSpec(num_kv_heads, num_kv_heads, head_dim, 1.0)
    cache = backend.allocate(layer, backend.kv_cache_spec(layer, kv.dtype, block_size), num_blocks)
    assert cache.shape == kv.shape and cache.dtype == kv.dtype and not cache.is_contiguous()
    assert torch.count_nonzero(cache) == 0, "a new cache is zero-filled"
    cache.copy_(kv)
    return cache


@pytest.mark.parametrize("allocated", [False, True], ids=["contiguous", "allocated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cpu_attention_backend(dtype, allocated):
    """The backend as the runner calls it: write this step's KV, then attend, on a contiguous
    cache and on the one `allocate` makes. fp16 takes the torch path (the native kernels do
    not cover it)."""
    _, kv, meta = _batch(RAGGED, 16, 9, 3, 64, dtype, seed=6)
    g = torch.Generator().manual_seed(7)
    num_tokens = meta.query_start_loc_cpu[-1]
    k = torch.randn(num_tokens, 3, 64, generator=g).to(dtype)
    v = torch.randn(num_tokens, 3, 64, generator=g).to(dtype)
    q = torch.randn(num_tokens, 9, 64, generator=g).to(dtype)
    backend, want_kv = CpuAttention(CpuDevice()), kv.clone()
    if allocated:
        kv = _allocated_like(backend, kv)
    backend.write_kv(k, v, kv, meta)
    ref.write_kv(k, v, want_kv, meta.slot_mapping)
    assert torch.equal(kv, want_kv)
    out = backend.attend(q, kv, meta, AttentionSpec(9, 3, 64, 0.125))
    tol = TOL.get(dtype, 2e-3)
    torch.testing.assert_close(out.float(), ref.attend(q.float(), kv.float(), meta, 0.125), atol=tol, rtol=tol)


@pytest.mark.parametrize("seqs", [RAGGED, RAGGED[::-1]], ids=["decodes-first", "decodes-last"])
@pytest.mark.parametrize("window", [None, 20])
def test_torch_path_matches_native(window, seqs):
    """Decode rows anywhere in the batch (the torch path batches them apart from the prefills)."""
    q, kv, meta = _batch(seqs, 16, 9, 3, 64, torch.float32, seed=8)
    layer = AttentionSpec(9, 3, 64, 0.125, sliding_window=window)
    native = CpuAttention(CpuDevice(), use_native=True).attend(q, kv, meta, layer)
    torch_path = CpuAttention(CpuDevice(), use_native=False).attend(q, kv, meta, layer)
    torch.testing.assert_close(native, torch_path, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native, ref.attend(q, kv, meta, 0.125, window), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_causal_layers_run_on_the_torch_path(dtype):
    """The native kernels are causal only: encoders' non-causal layers are accepted and
    computed on the torch path, equal to the kit's reference (every query sees its
    request's whole context), not mis-computed by the causal kernels."""
    backend = CpuAttention(CpuDevice())
    encoder = AttentionSpec(8, 2, 64, 0.125, causal=False)
    assert backend.supports(encoder, dtype, 16) is None
    assert backend.supports(AttentionSpec(8, 2, 64, 0.125), dtype, 16) is None
    q, kv, meta = _batch(RAGGED, 16, 8, 2, 64, dtype, seed=9)
    want = ref.attend(q.float(), kv.float(), meta, 0.125, None, causal=False)
    got = backend.attend(q, kv, meta, encoder)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    assert not torch.allclose(got.float(), ref.attend(q.float(), kv.float(), meta, 0.125, None), atol=tol)
    # a step holding each prompt whole (an encoder's): forward attends on the step's own k/v
    q, kv, meta = _batch([(5, 5), (40, 40), (17, 17)], 16, 8, 2, 64, dtype, seed=10)
    g = torch.Generator().manual_seed(11)
    k, v = (torch.randn(q.shape[0], 2, 64, generator=g).to(dtype) for _ in range(2))
    got = backend.forward(q, k, v, kv, meta, encoder)
    want = ref.attend(q.float(), kv.float(), meta, 0.125, None, causal=False)  # kv now holds k and v
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(
    "seqs",
    [RAGGED * 3, [(2000, 1)], [(3000, 1), (20, 1)], [(1, 1)]],
    ids=["ragged", "one-decode", "two-decodes", "tiny"],
)
def test_threads(isa, threads, seqs):
    """Work split over threads (more items than threads, and a thread count above the
    cores); fewer items than threads, where long items' keys are split across threads
    on their own (split-K), or too short to be."""
    q, kv, meta = _batch(seqs, 16, 9, 3, 64, torch.bfloat16, seed=9)
    want = ref.attend(q.float(), kv.float(), meta, 0.125)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.empty_like(q)
        _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.125)
        x = torch.randn(3000, 64, dtype=torch.bfloat16)  # past the size where rms_norm goes parallel
        w = torch.ones(64, dtype=torch.bfloat16)
        normed = _native.rms_norm(x, w, 1e-6)
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(normed.float(), ref.rms_norm(x, w, 1e-6).float(), atol=2e-2, rtol=2e-2)


# ---- dense per-token kernels: linear (small M), rotary, silu_and_mul ----------------------


def _bf16_tol(ref: torch.Tensor, dtype) -> dict:
    """Tolerance for one rounding of the output to dtype (bf16: 8 significant bits, so
    relative 2^-8), plus a little for summation order; fp32 sums of a few hundred terms
    differ from torch's by ~1e-6 relative."""
    if dtype == torch.bfloat16:
        return dict(atol=1e-2, rtol=2**-7)
    return dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16])
@pytest.mark.parametrize(
    "k, n", [(576, 960), (64, 33), (37, 13), (1536, 7), (100, 129)], ids=["qkv", "n33", "odd", "down-tail", "k100"]
)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_linear(isa, dtype, m, k, n, bias):
    """fp32 math on the same (bf16-rounded) inputs is the reference; tails over K (vector
    width, odd for the bf16 pairs) and M (groups of 4 tokens), N past the threads' split."""
    g = torch.Generator().manual_seed(10 + m)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * k**-0.5).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    got = _native.linear(x, w, b)
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    assert got.dtype == dtype and got.shape == (m, n)
    torch.testing.assert_close(got.float(), want, **_bf16_tol(want, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_linear_strided_rows_and_batch_dims(isa, dtype):
    """x as a view whose rows are strided (a slice of a wider tensor), and [B, T, K] input."""
    g = torch.Generator().manual_seed(11)
    wide = torch.randn(6, 200, generator=g).to(dtype)
    x = wide[:, 10:110]  # row stride 200
    w = (torch.randn(70, 100, generator=g) * 0.1).to(dtype)
    want = torch.nn.functional.linear(x.float(), w.float())
    torch.testing.assert_close(_native.linear(x, w).float(), want, **_bf16_tol(want, dtype))
    x3 = torch.randn(2, 3, 100, generator=g).to(dtype)
    got = _native.linear(x3, w)
    assert got.shape == (2, 3, 70)
    want = torch.nn.functional.linear(x3.float(), w.float())
    torch.testing.assert_close(got.float(), want, **_bf16_tol(want, dtype))


@pytest.mark.parametrize("threads", [2, 3])
def test_linear_threads(isa, threads):
    """Rows split over threads, with a count that leaves the last range short."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 96, generator=g).to(torch.bfloat16)
    w = (torch.randn(1001, 96, generator=g) * 0.1).to(torch.bfloat16)
    want = torch.nn.functional.linear(x.float(), w.float())
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _native.linear(x, w)
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(got.float(), want, **_bf16_tol(want, torch.bfloat16))


def _qkv_views(tokens, num_heads, num_kv_heads, head_dim, dtype, seed):
    """q, k as the attention layer makes them: views into one fused qkv row per token."""
    g = torch.Generator().manual_seed(seed)
    qs, kvs = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(tokens, qs + 2 * kvs, generator=g).to(dtype)
    q, k, v = qkv.split([qs, kvs, kvs], dim=-1)
    return qkv, q.reshape(tokens, num_heads, head_dim), k.reshape(tokens, num_kv_heads, head_dim), v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "head_dim, rot_dim",
    [(64, 64), (128, 128), (80, 80), (64, 32), (128, 64), (96, 24)],
    ids=["64", "128", "80", "64-partial", "128-partial", "96-partial-tail"],
)
@pytest.mark.parametrize("tokens", [1, 7, 300])  # 300: enough work for threads
def test_rotary_in_place(isa, dtype, head_dim, rot_dim, tokens):
    """Bit-exact with the core's default (same fp32 products and sums, one rounding), in place
    through the strided views of a fused qkv tensor; v and the unrotated tail stay as they were."""
    from octavo_plugin_kit.inputs import make_cos_sin_cache

    qkv, q, k, v = _qkv_views(tokens, 9, 3, head_dim, dtype, seed=13)
    max_pos = 4096
    cache = make_cos_sin_cache(rot_dim, max_pos, base=10000.0)
    positions = torch.randint(0, max_pos, (tokens,), generator=torch.Generator().manual_seed(14))
    positions[0] = max_pos - 1
    want_q, want_k = FusedOps(CpuDevice()).rotary(q.clone(), k.clone(), positions, cache)
    spec_q, spec_k = ref.rotary(q.float(), k.float(), positions, cache)
    v_before = v.clone()
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got_q, got_k = _native.rotary(q, k, positions, cache)
    finally:
        torch.set_num_threads(saved)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr(), "must rotate in place"
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    tol = TOL[dtype]
    torch.testing.assert_close(got_q.float(), spec_q.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(got_k.float(), spec_k.float(), atol=tol, rtol=tol)
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "shape", [(1, 3072), (5, 2 * 37), (300, 1536), (2, 3, 40)], ids=["decode", "tail", "threads", "3d"]
)
def test_silu_and_mul(isa, dtype, shape):
    """Against fp32 math rounded once (the reference op), inputs spanning silu's range
    (large |x| exercises the exp clamp: silu(-100) ~ 0, silu(100) = 100)."""
    g = torch.Generator().manual_seed(15)
    x = (torch.randn(*shape, generator=g) * 4).to(dtype)
    x.view(-1)[:4] = torch.tensor([-100.0, 100.0, -90.0, 0.0]).to(dtype)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = _native.silu_and_mul(x)
    finally:
        torch.set_num_threads(saved)
    want = ref.silu_and_mul(x.float())
    assert got.dtype == dtype and got.shape == (*shape[:-1], shape[-1] // 2)
    if dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=2**-7)
    else:
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "rows,vocab", [(1, 7), (3, 257), (40, 4099), (64, 49152)], ids=["tiny", "block-tail", "ragged", "smollm2"]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_sample(isa, dtype, rows, vocab, threads):
    """Each drawn token is the inverse CDF's at u, against a float64 CDF of the same
    (rounded) logits: with temperatures and without, banned tokens, u at 0 and near 1,
    strided rows (a view of wider logits)."""
    g = torch.Generator().manual_seed(rows * 31 + vocab)
    wide = (torch.randn(rows, vocab + 5, generator=g) * 4).to(dtype)
    logits = wide[:, :vocab]
    ban = torch.rand(rows, vocab, generator=g) < 0.3
    ban[:, 0] = False  # a token always stays
    logits.masked_fill_(ban, float("-inf"))
    u = torch.rand(rows, generator=g)
    u[0] = 0.0
    u[-1] = 1.0 - 2.0**-24
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for temps in (None, torch.rand(rows, generator=g) * 1.5 + 0.2):
            got = _native.sample(logits, temps, u)
            cdf = ref.sample_cdf(logits.float(), temps)
            assert got.dtype == torch.int64 and got.shape == (rows,)
            for i, k in enumerate(got.tolist()):
                assert 0 <= k < vocab and logits[i, k] != float("-inf"), (i, k)
                lo = float(cdf[i, k - 1]) if k > 0 else 0.0
                assert lo - 1e-5 <= float(u[i]) < float(cdf[i, k]) + 1e-5, (i, k, float(u[i]), lo, float(cdf[i, k]))
    finally:
        torch.set_num_threads(saved)


def test_platform_sampler_uses_the_native_draw(monkeypatch, tiny_model_dirs):
    """CpuOps.sample is the native kernel for float32 logits, the engine's sampler draws
    through the platform's ops, and a seeded request draws the tokens the torch default draws from
    the same u."""
    from octavo import LLM
    from octavo.sampling import Sampler, inverse_cdf_sample
    from octavo.sampling_params import SamplingParams

    native_calls = []
    real = _native.sample
    monkeypatch.setattr(_native, "sample", lambda *a: native_calls.append(a) or real(*a))
    llm = LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="float32", kv_cache_memory="32MiB")
    p = llm.llm_engine.platform
    llm.generate(
        [{"prompt_token_ids": [5, 6, 7]}], SamplingParams(temperature=0.8, seed=1, max_tokens=3), use_tqdm=False
    )
    assert len(native_calls) == 3  # one native draw per step, through the engine's runner

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 1000, generator=g) * 3
    params = [SamplingParams(temperature=0.8, seed=i) for i in range(8)]
    ids = [f"r{i}" for i in range(8)]
    calls = []

    def spy(*args):
        calls.append(args)
        return p.ops.sample(*args)

    native = Sampler(torch.device("cpu"), spy).launch(logits, ids, params, [([1], 1)] * 8).result()
    torch_path = Sampler(torch.device("cpu"), inverse_cdf_sample).launch(logits, ids, params, [([1], 1)] * 8).result()
    assert len(calls) == 1 and calls[0][1] is not None  # temperatures passed, not applied before
    assert len(native_calls) == 4  # CpuOps.sample took the native kernel
    assert native.token_ids == torch_path.token_ids


def test_silu_and_mul_strided_rows(isa):
    g = torch.Generator().manual_seed(16)
    wide = torch.randn(4, 300, generator=g)
    x = wide[:, :200]
    torch.testing.assert_close(_native.silu_and_mul(x), ref.silu_and_mul(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 1000, 49152])
def test_apply_token_bitmask(vocab):
    """Against core's definition: random words, all-allowed (-1) and all-banned (0) words, a
    vocabulary that ends mid-word, and a bitmask wider than the vocabulary needs."""
    g = torch.Generator().manual_seed(vocab)
    words = -(-vocab // 32) + 1
    bitmask = torch.randint(-(2**31), 2**31 - 1, (5, words), generator=g, dtype=torch.int64).to(torch.int32)
    bitmask[1] = -1
    bitmask[2] = 0
    bitmask[3, ::2] = -1
    logits = torch.randn(5, vocab, generator=g)
    want = ops.apply_token_bitmask(logits.clone(), bitmask)  # core's torch definition
    got = _native.apply_token_bitmask(logits.clone(), bitmask)
    assert torch.equal(got, want)
