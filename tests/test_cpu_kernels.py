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
from octavo.platform import Platform
from octavo_plugin_kit import reference as ref
from octavo_plugin_kit.inputs import make_attention_metadata

from octavo_cpu import _native
from octavo_cpu.attention import CpuAttention
from octavo_cpu.platform import CpuPlatform

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
    meta = make_attention_metadata(seq_lens, q_lens, block_size, num_blocks, generator=g)
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
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale, q_tile=8,
                            kernel=kernel)
    want = ref.attend(q.float(), kv.float(), meta, scale)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [1, 5, 16, 40, 1000])
def test_paged_attention_sliding_window(isa, window, dtype, kernel):
    q, kv, meta = _batch(RAGGED, 16, 8, 2, 64, dtype, seed=1)
    out = torch.empty_like(q)
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.125, window,
                            q_tile=4, kernel=kernel)
    want = ref.attend(q.float(), kv.float(), meta, 0.125, window)
    torch.testing.assert_close(out.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("q_tile", [1, 3, 16, 64])
@pytest.mark.parametrize("head_dim", [80, 96, 256])  # tails of the vector loops; 96 and 256 run blocked
def test_paged_attention_tiles_and_odd_head_dims(isa, q_tile, head_dim, kernel):
    q, kv, meta = _batch(RAGGED, 16, 6, 2, head_dim, torch.float32, seed=2)
    out = torch.empty_like(q)
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.1,
                            q_tile=q_tile, kernel=kernel)
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
    _native.paged_attention(out, q, kv, meta.block_tables, meta.seq_lens, meta.query_start_loc, 0.125, window,
                            q_tile=16, kv_splits=kv_splits, kernel=kernel)
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
@pytest.mark.parametrize("q_dtype, kv_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
                         ids=["fp32-q-bf16-kv", "bf16-q-fp32-kv"])
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


@pytest.mark.parametrize("src, cache", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                        (torch.float32, torch.bfloat16)], ids=["fp32", "bf16", "fp32-to-bf16"])
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
    want = Platform.rms_norm(CpuPlatform(), x, w, 1e-5, res)
    spec = ref.rms_norm(x, w, 1e-5, res)
    if not with_residual:
        got, want, spec = (got,), (want,), (spec,)
    else:
        assert torch.equal(res, res_before), "the residual input must not change"
        assert torch.equal(got[1], want[1])
    for a, b, c in zip(got, want, spec):
        torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])
        torch.testing.assert_close(a.float(), c.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cpu_attention_backend(dtype):
    """The backend as the runner calls it: write this step's KV, then attend. fp16 takes
    the torch path (the native kernels do not cover it)."""
    _, kv, meta = _batch(RAGGED, 16, 9, 3, 64, dtype, seed=6)
    g = torch.Generator().manual_seed(7)
    num_tokens = meta.query_start_loc_cpu[-1]
    k = torch.randn(num_tokens, 3, 64, generator=g).to(dtype)
    v = torch.randn(num_tokens, 3, 64, generator=g).to(dtype)
    q = torch.randn(num_tokens, 9, 64, generator=g).to(dtype)
    backend, want_kv = CpuAttention(), kv.clone()
    backend.write_kv(k, v, kv, meta.slot_mapping)
    ref.write_kv(k, v, want_kv, meta.slot_mapping)
    assert torch.equal(kv, want_kv)
    out = backend.attend(q, kv, meta, 0.125)
    tol = TOL.get(dtype, 2e-3)
    torch.testing.assert_close(out.float(), ref.attend(q.float(), kv.float(), meta, 0.125), atol=tol, rtol=tol)


def test_torch_path_matches_native():
    q, kv, meta = _batch(RAGGED, 16, 9, 3, 64, torch.float32, seed=8)
    native = CpuAttention(use_native=True).attend(q, kv, meta, 0.125, 20)
    torch_path = CpuAttention(use_native=False).attend(q, kv, meta, 0.125, 20)
    torch.testing.assert_close(native, torch_path, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("seqs", [RAGGED * 3, [(2000, 1)], [(3000, 1), (20, 1)], [(1, 1)]],
                         ids=["ragged", "one-decode", "two-decodes", "tiny"])
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
