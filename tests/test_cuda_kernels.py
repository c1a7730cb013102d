"""octavo-cuda's Triton kernels against dense references.

Where they run:
* on a CUDA GPU (torch.cuda.is_available() and triton installed): every test, many shapes;
* on a CPU under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported):
  the same tests at small shapes, e.g. `TRITON_INTERPRET=1 pytest tests/test_cuda_kernels.py`;
* otherwise (CI on a CPU): `test_kernels_under_interpreter` re-runs this file in a
  subprocess with TRITON_INTERPRET=1, so CI checks every kernel without a GPU; it skips,
  saying why, when triton is not installed.

References: `octavo_plugin_kit.reference` when it is installed, else the small dense
float32 attention below and the interface's own torch defaults (`Platform.rms_norm`
etc.) for the fused ops. They run on the CPU: attention in float32 from the same
rounded inputs, the fused ops in the inputs' dtype (their rounding is part of the
contract). The batches are built here rather than with the kit's factory so that
unused block-table entries point far outside the cache: a kernel that follows one
reads out of bounds instead of a harmless page 0.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from octavo.platform import AttentionMetadata, Platform

try:  # the project's reference ops, once they exist
    from octavo_plugin_kit import reference as kit_reference
except ImportError:
    kit_reference = None

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"
#: GPU runs sweep many shapes; the interpreter runs a few small ones
FULL = ON_GPU

kernels = pytest.mark.skipif(
    not (ON_GPU or (INTERPRET and HAS_TRITON)),
    reason="needs a CUDA GPU, or TRITON_INTERPRET=1 with triton installed "
    "(test_kernels_under_interpreter runs them that way)",
)

# |out - ref| tolerances by dtype: bf16 keeps 8 mantissa bits, fp16 11
TOL = {torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3), torch.float32: (2e-5, 2e-5)}
# relative Frobenius error for attention (METHOD.md: bf16 1e-3..1e-2, fp32 far below 1e-3)
REL_ERR = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}


def _reference_ops():
    """rms_norm, rotary, silu_and_mul: the kit's reference, else the interface's defaults."""
    if kit_reference is not None:
        return kit_reference
    return Platform.__new__(Platform)  # no __init__: the defaults need no attention backend


def _cuda_platform():
    from octavo_cuda import CudaPlatform

    return CudaPlatform()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype).to(DEVICE)


# ---- paged batches -------------------------------------------------------------------


def make_batch(q_lens, seq_lens, *, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0):
    """A flat batch over a randomly filled paged cache with shuffled block tables.

    Unused block-table entries hold page ids far out of range: a kernel that follows a
    page past a request's length reads outside the cache and fails (or faults).
    """
    gen = _gen(seed)
    assert all(0 < ql <= sl for ql, sl in zip(q_lens, seq_lens))
    blocks = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(blocks) + 5
    perm = torch.randperm(num_blocks, generator=gen)
    max_blocks = max(blocks) + 2
    table = torch.full((len(seq_lens), max_blocks), 1 << 28, dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks):
        table[i, :nb] = perm[used : used + nb].to(torch.int32)
        used += nb
    slots = []
    for i, (ql, sl) in enumerate(zip(q_lens, seq_lens)):
        for pos in range(sl - ql, sl):
            slots.append(int(table[i, pos // block_size]) * block_size + pos % block_size)
    qsl = [0]
    for ql in q_lens:
        qsl.append(qsl[-1] + ql)
    num_decodes = 0
    while num_decodes < len(q_lens) and q_lens[num_decodes] == 1:
        num_decodes += 1
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        block_tables=table.to(DEVICE),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=list(seq_lens),
        num_decodes=num_decodes,
    )
    kv_cache = _rand((2, num_blocks, block_size, num_kv_heads, head_dim), dtype, gen)
    q = _rand((qsl[-1], num_heads, head_dim), dtype, gen)
    return q, kv_cache, meta


def _meta_cpu(meta: AttentionMetadata) -> AttentionMetadata:
    return AttentionMetadata(
        meta.query_start_loc.cpu(),
        meta.seq_lens.cpu(),
        meta.block_tables.cpu(),
        meta.slot_mapping.cpu(),
        meta.max_query_len,
        meta.max_seq_len,
        list(meta.query_start_loc_cpu),
        list(meta.seq_lens_cpu),
        meta.num_decodes,
    )


def dense_attend(q, kv_cache, meta, scale, sliding_window=None):
    """Float32 paged attention, one request at a time, straight from the definition."""
    _, _, bs, hk, d = kv_cache.shape
    hq = q.shape[1]
    out = torch.empty(q.shape, dtype=torch.float32)
    qsl, seq_lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
    for i, sl in enumerate(seq_lens):
        s, e = qsl[i], qsl[i + 1]
        pages = meta.block_tables[i, : math.ceil(sl / bs)].long()
        k = kv_cache[0, pages].reshape(-1, hk, d)[:sl].float().repeat_interleave(hq // hk, dim=1)
        v = kv_cache[1, pages].reshape(-1, hk, d)[:sl].float().repeat_interleave(hq // hk, dim=1)
        qpos = torch.arange(sl - (e - s), sl)[:, None]
        kpos = torch.arange(sl)[None, :]
        mask = kpos <= qpos
        if sliding_window:
            mask &= kpos > qpos - sliding_window
        scores = torch.einsum("qhd,khd->hqk", q[s:e].float(), k) * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out[s:e] = torch.einsum("hqk,khd->qhd", probs, v)
    return out


def reference_attend(q, kv_cache, meta, scale, sliding_window=None):
    q32, kv32, meta = q.float().cpu(), kv_cache.float().cpu(), _meta_cpu(meta)
    if kit_reference is not None:
        return kit_reference.attend(q32, kv32, meta, scale, sliding_window).float()
    return dense_attend(q32, kv32, meta, scale, sliding_window)


def check_attention(out, ref, dtype):
    out = out.float().cpu()
    assert torch.isfinite(out).all(), "non-finite attention output"
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < REL_ERR[dtype], f"relative error {rel:.2e}"
    # every row close, so a single unwritten or wrong row fails too
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=4 * atol, rtol=4 * rtol)


def run_attend(
    q_lens,
    seq_lens,
    *,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    block_size=16,
    dtype=torch.bfloat16,
    window=None,
    seed=0,
):
    from octavo_cuda.attention import CudaAttention

    q, kv, meta = make_batch(
        q_lens,
        seq_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        seed=seed,
    )
    scale = head_dim**-0.5
    out = CudaAttention().attend(q, kv, meta, scale, window)
    check_attention(out, reference_attend(q, kv, meta, scale, window), dtype)


# ---- attention -----------------------------------------------------------------------

BATCHES = {
    # name: (q_lens, seq_lens)
    "decode": ([1, 1, 1, 1], [1, 17, 64, 300]),
    "prompt": ([5, 33, 70], [5, 33, 70]),
    "chunk_with_context": ([16, 7, 40], [50, 100, 41]),
    "mixed": ([1, 1, 1, 9, 24, 1], [40, 1, 130, 9, 60, 3]),  # a late decode goes the prefill way
    # chunks starting just before, at and after 64-key tile edges (ctx 62, 63, 64, 127)
    "tile_edges": ([2, 3, 70, 66], [64, 66, 134, 193]),
}
if FULL:
    BATCHES |= {
        "decode_long": ([1] * 8, [4096, 3000, 1, 777, 2048, 5000, 16, 1025]),
        "prompt_long": ([1000, 2048, 31], [1000, 2048, 31]),
        "mixed_long": ([1] * 20 + [512, 300, 1500], list(range(100, 2100, 100)) + [1024, 2300, 1500]),
    }


@kernels
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_attend_batches(batch, dtype):
    q_lens, seq_lens = BATCHES[batch]
    run_attend(q_lens, seq_lens, dtype=dtype, head_dim=64)


@kernels
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256] if FULL else [16, 128, 256])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (14, 2)] + ([(32, 8), (64, 8), (16, 1)] if FULL else []))
def test_attend_shapes(head_dim, heads):
    """Head sizes and GQA ratios (1, 4, 7, 8, 16); 7 is not a power of two."""
    num_heads, num_kv_heads = heads
    q_lens, seq_lens = BATCHES["mixed"]
    run_attend(q_lens, seq_lens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, seed=1)


@kernels
@pytest.mark.parametrize("block_size", [8, 16, 32] + ([64, 128, 256] if FULL else []))
def test_attend_block_sizes(block_size):
    q_lens, seq_lens = BATCHES["mixed"]
    run_attend(q_lens, seq_lens, block_size=block_size, seed=2)


@kernels
@pytest.mark.parametrize("window", [1, 8, 33] + ([256, 1000] if FULL else []))
@pytest.mark.parametrize("batch", ["decode", "chunk_with_context", "mixed"] + (["mixed_long"] if FULL else []))
def test_attend_sliding_window(window, batch):
    q_lens, seq_lens = BATCHES[batch]
    run_attend(q_lens, seq_lens, window=window, seed=3)


@kernels
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
@pytest.mark.parametrize("window", [None, 100])
def test_decode_splits(num_splits, window):
    """Split-K decode with forced split counts, empty splits included (seq_len 1)."""
    from octavo_cuda.kernels.decode_attention import decode_attention

    seq_lens = [1, 5, 64, 65, 300, 513]
    q, kv, meta = make_batch(
        [1] * len(seq_lens),
        seq_lens,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        block_size=16,
        dtype=torch.bfloat16,
        seed=4,
    )
    out = torch.empty_like(q)
    decode_attention(
        out,
        q,
        kv[0],
        kv[1],
        meta.block_tables,
        meta.seq_lens,
        len(seq_lens),
        meta.max_seq_len,
        0.125,
        window,
        num_splits=num_splits,
    )
    check_attention(out, reference_attend(q, kv, meta, 0.125, window), torch.bfloat16)


@kernels
def test_attend_random_batches():
    """Fresh random mixes of decodes and chunks, each checked."""
    rng = _gen(5)
    for trial in range(8 if FULL else 2):
        nd = int(torch.randint(0, 5, (1,), generator=rng))
        npf = int(torch.randint(0 if nd else 1, 4, (1,), generator=rng))
        top = 3000 if FULL else 150
        seq_lens = torch.randint(1, top, (nd + npf,), generator=rng).tolist()
        q_lens = [1] * nd + [int(torch.randint(1, s + 1, (1,), generator=rng)) for s in seq_lens[nd:]]
        window = [None, 64][trial % 2]
        run_attend(q_lens, seq_lens, num_heads=8, num_kv_heads=2, head_dim=128, window=window, seed=100 + trial)


# ---- KV cache write --------------------------------------------------------------------


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("strided", [False, True])
def test_write_kv(dtype, strided):
    from octavo_cuda.attention import CudaAttention

    hk, d, bs, num_blocks, t = 2, 64, 16, 12, 37
    gen = _gen(6)
    if strided:  # k, v as views into a fused qkv projection output
        qkv = _rand((t, (4 + 2 * hk) * d), dtype, gen)
        k = qkv[:, 4 * d : (4 + hk) * d].view(t, hk, d)
        v = qkv[:, (4 + hk) * d :].view(t, hk, d)
    else:
        k, v = _rand((t, hk, d), dtype, gen), _rand((t, hk, d), dtype, gen)
    slots = torch.randperm(num_blocks * bs, generator=gen)[:t]
    slots[::5] = -1  # padding tokens are skipped
    slots = slots.to(DEVICE)
    kv_cache = _rand((2, num_blocks, bs, hk, d), dtype, gen)
    expected = kv_cache.clone().cpu()
    keep = slots.cpu() >= 0
    flat = expected.view(2, num_blocks * bs, hk, d)
    flat[0, slots.cpu()[keep]] = k.cpu()[keep]
    flat[1, slots.cpu()[keep]] = v.cpu()[keep]
    CudaAttention().write_kv(k, v, kv_cache, slots)
    assert torch.equal(kv_cache.cpu(), expected)


# ---- fused ops -----------------------------------------------------------------------


def _close(out, ref, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.cpu(), ref.cpu(), atol=atol, rtol=rtol)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hidden", [64, 1000] + ([4096, 8192] if FULL else []))
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, hidden, with_residual):
    gen = _gen(7)
    x = _rand((13, hidden), dtype, gen, scale=3.0)
    w = _rand((hidden,), dtype, gen)
    res = _rand((13, hidden), dtype, gen) if with_residual else None
    got = _cuda_platform().rms_norm(x, w, 1e-6, res)
    ref = _reference_ops().rms_norm(x.cpu(), w.cpu(), 1e-6, None if res is None else res.cpu())
    if with_residual:
        if ON_GPU:
            assert torch.equal(got[1].cpu(), ref[1]), "the residual stream must be x + residual exactly"
        else:  # the interpreter truncates float32 -> bf16 instead of rounding to nearest
            torch.testing.assert_close(got[1].cpu(), ref[1], atol=0, rtol=2**-7)
        got, ref = got[0], ref[0]
    assert got.dtype == ref.dtype
    _close(got, ref, dtype)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim,rot_dim", [(64, 64), (128, 128), (128, 64), (96, 32)])
def test_rotary(dtype, head_dim, rot_dim):
    gen = _gen(8)
    t, hq, hk, max_pos = 19, 6, 2, 4096
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(DEVICE)
    qkv = _rand((t, (hq + 2 * hk) * head_dim), dtype, gen)
    q = qkv[:, : hq * head_dim].view(t, hq, head_dim)  # strided views, as a model passes them
    k = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(t, hk, head_dim)
    positions = torch.randint(0, max_pos, (t,), generator=gen).to(DEVICE)
    before = qkv.clone()
    gq, gk = _cuda_platform().rotary(q, k, positions, cos_sin)
    rq, rk = _reference_ops().rotary(q.cpu(), k.cpu(), positions.cpu(), cos_sin.cpu())
    assert torch.equal(qkv, before), "rotary must not modify its inputs"
    _close(gq, rq, dtype)
    _close(gk, rk, dtype)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 1000] + ([11008, 14336] if FULL else []))
def test_silu_and_mul(dtype, d):
    x = _rand((2, 5, 2 * d), dtype, _gen(9), scale=4.0)
    got = _cuda_platform().silu_and_mul(x)
    ref = _reference_ops().silu_and_mul(x.cpu())
    assert got.shape == ref.shape
    _close(got, ref, dtype)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "rows,n,k",
    [(1, 37, 100), (1, 130, 64), (3, 64, 576), (2, 9, 2048 + 48)]
    + ([(1, 6144, 4096), (1, 4096, 14336), (4, 128256, 4096), (1, 49152, 576)] if FULL else []),
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv(dtype, rows, n, k, with_bias):
    """The decode GEMV against a float32 matmul of the same rounded inputs; x's rows strided
    (a view into a wider tensor), N not a multiple of the block, K not of BLOCK_K."""
    gen = _gen(10)
    x = _rand((rows, k + 8), dtype, gen)[:, 3 : k + 3]
    w = _rand((n, k), dtype, gen, scale=k**-0.5)
    b = _rand((n,), dtype, gen) if with_bias else None
    from octavo_cuda.kernels.gemv import gemv

    got = gemv(x, w, b)
    ref = torch.nn.functional.linear(x.cpu().float(), w.cpu().float(), None if b is None else b.cpu().float())
    assert got.shape == (rows, n) and got.dtype == dtype
    # one rounding of the float32 sum to dtype; fp32 sums in another order differ by ~k ulps
    tol = {torch.float32: 1e-4}.get(dtype, TOL[dtype][0])
    torch.testing.assert_close(got.cpu().float(), ref, atol=tol, rtol=tol)
    if rows == 1:  # the platform routes one-row linears here
        torch.testing.assert_close(_cuda_platform().linear(x, w, b).cpu(), got.cpu(), atol=0, rtol=0)


# ---- the platform, without a GPU -------------------------------------------------------


def test_platform_imports_without_gpu_or_triton():
    """Discovery imports the plugin everywhere: that must not need triton or a GPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any import of triton would now fail
        "from octavo_cuda import CudaPlatform\n"
        "a = CudaPlatform.availability(); p = CudaPlatform()\n"
        "print(a.score, a.reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    score, reason = proc.stdout.split(" ", 1)
    if not torch.cuda.is_available():
        assert score == "0" and reason.strip()


def test_check_config_reasons():
    from octavo_cuda.attention import CudaAttention

    att = CudaAttention()
    assert att.check_config(head_dim=128, block_size=16, dtype=torch.bfloat16) is None
    assert "block size 12" in att.check_config(head_dim=128, block_size=12, dtype=torch.bfloat16)
    assert "block size 4" in att.check_config(head_dim=128, block_size=4, dtype=torch.bfloat16)
    assert "head size 80" in att.check_config(head_dim=80, block_size=16, dtype=torch.bfloat16)


# ---- CI: the same tests under the interpreter ----------------------------------------------


@pytest.mark.skipif(ON_GPU or INTERPRET, reason="the kernels run directly in this process")
@pytest.mark.skipif(
    not HAS_TRITON,
    reason="triton is not installed: pip install triton to check the CUDA kernels on a CPU under its interpreter",
)
def test_kernels_under_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so run in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
