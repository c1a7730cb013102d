"""octavo_triton's kernels against the plugin kit's reference ops.

Where they run:
* on a GPU that torch and triton both see (CUDA, ROCm or XPU): every test, many shapes;
* on a CPU under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported):
  the same tests at small shapes, e.g. `TRITON_INTERPRET=1 pytest triton-kernels/tests`;
* otherwise (CI on a CPU): `test_kernels_under_interpreter` re-runs this file in a
  subprocess with TRITON_INTERPRET=1, so CI checks every kernel without a GPU; it skips,
  saying why, when triton is not installed.

By default each launcher takes the tuning entry of its tensors' device (on the CPU, the
NVIDIA tiles that ship); `test_each_targets_tiles` runs the attention kernels with every
other entry of the table too, so the tiles of GPUs nobody here has are checked for numbers.

References: `octavo_plugin_kit.reference`, on the CPU: attention in float32 from the same
rounded inputs, the fused ops in the inputs' dtype (their rounding is part of the
contract). The batches are built here rather than with the kit's factory so that unused
block-table entries point far outside the cache: a kernel that follows one reads out of
bounds instead of a harmless page 0.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

reference = pytest.importorskip("octavo_plugin_kit.reference", reason="the references are the plugin kit's")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if HAS_TRITON and not INTERPRET and torch.cuda.is_available():  # NVIDIA, or AMD through ROCm's torch
    DEVICE = "cuda"
elif HAS_TRITON and not INTERPRET and hasattr(torch, "xpu") and torch.xpu.is_available():
    DEVICE = "xpu"
else:
    DEVICE = "cpu"
ON_GPU = DEVICE != "cpu"
#: GPU runs sweep many shapes; the interpreter runs a few small ones
FULL = ON_GPU

kernels = pytest.mark.skipif(
    not (ON_GPU or (INTERPRET and HAS_TRITON)),
    reason="needs a GPU, or TRITON_INTERPRET=1 with triton installed "
    "(test_kernels_under_interpreter runs them that way)",
)

# |out - ref| tolerances by dtype: bf16 keeps 8 mantissa bits, fp16 11
TOL = {torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3), torch.float32: (2e-5, 2e-5)}
# relative Frobenius error for attention (METHOD.md: bf16 1e-3..1e-2, fp32 far below 1e-3)
REL_ERR = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
#: what unused block-table entries hold: a page far past the end of any cache here
FAR_PAGE = 1 << 28


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype).to(DEVICE)


# ---- paged batches -------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """A flat batch as the kernels see it. The field names are the plugin interface's, which
    is all the kit's reference reads of a batch."""

    query_start_loc: torch.Tensor  # int32 [B + 1]
    seq_lens: torch.Tensor  # int32 [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks]
    slot_mapping: torch.Tensor  # int64 [T]
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_decodes(self) -> int:
        """Leading requests with one query token (the decode kernel's share)."""
        qsl, n = self.query_start_loc_cpu, 0
        while n < len(qsl) - 1 and qsl[n + 1] - qsl[n] == 1:
            n += 1
        return n

    def to(self, device) -> Batch:
        return Batch(**{name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in vars(self).items()})


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
    table = torch.full((len(seq_lens), max(blocks) + 2), FAR_PAGE, dtype=torch.int32)
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
    meta = Batch(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=table,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=list(seq_lens),
    ).to(DEVICE)
    kv_cache = _rand((2, num_blocks, block_size, num_kv_heads, head_dim), dtype, gen)
    q = _rand((qsl[-1], num_heads, head_dim), dtype, gen)
    return q, kv_cache, meta


def attend(q, kv_cache, meta, scale, window=None, tuning=None):
    """A plugin's `attend` over these kernels: the leading decodes to the split-K decode
    kernel, the rest (chunks, and any decode after a chunk) to the prefill kernel."""
    from octavo_triton.decode_attention import decode_attention
    from octavo_triton.prefill_attention import prefill_attention

    out = torch.empty_like(q)
    nd, num_seqs = meta.num_decodes, len(meta.seq_lens_cpu)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    if nd:
        decode_attention(
            out,
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            nd,
            meta.max_seq_len,
            scale,
            window,
            tuning=tuning,
        )
    if nd < num_seqs:
        prefill_attention(
            out,
            q,
            k_cache,
            v_cache,
            meta.block_tables[nd:],
            meta.seq_lens[nd:],
            meta.query_start_loc[nd:],
            q.shape[0] - nd,
            meta.max_query_len,
            scale,
            window,
            tuning=tuning,
        )
    return out


def reference_attend(q, kv_cache, meta, scale, sliding_window=None):
    return reference.attend(q.float().cpu(), kv_cache.float().cpu(), meta.to("cpu"), scale, sliding_window).float()


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
    tuning=None,
):
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
    out = attend(q, kv, meta, scale, window, tuning)
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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_prefill_not_causal(head_dim, dtype):
    """Encoders (BERT): every query sees its request's whole context; whole prompts (as the
    pooling engine schedules them) across tile edges, and a chunk behind a context."""
    from octavo_triton.prefill_attention import prefill_attention

    q_lens, seq_lens = [5, 33, 70, 130, 16], [5, 33, 70, 130, 50]
    q, kv, meta = make_batch(
        q_lens, seq_lens, num_heads=12, num_kv_heads=12, head_dim=head_dim, block_size=16, dtype=dtype, seed=3
    )
    scale = head_dim**-0.5
    out = torch.empty_like(q)
    prefill_attention(
        out,
        q,
        kv[0],
        kv[1],
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        q.shape[0],
        meta.max_query_len,
        scale,
        causal=False,
    )
    want = reference.attend(q.float().cpu(), kv.float().cpu(), meta.to("cpu"), scale, causal=False).float()
    check_attention(out, want, dtype)


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
    from octavo_triton.decode_attention import decode_attention

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


def _entries():
    from octavo_triton import tuning

    return [tuning.DEFAULT, *tuning.TABLE.values()]


def _values(entry):
    return tuple((name, value) for name, value in vars(entry).items() if name != "target")


def _other_entries() -> list[str]:
    """One target per distinct set of values in the table, but the one this device runs by default."""
    from octavo_triton.tuning import for_device

    seen = {_values(for_device(torch.device(DEVICE)))}
    names = []
    for entry in _entries():
        if _values(entry) not in seen:
            seen.add(_values(entry))
            names.append(entry.target)
    return names


def _entry(name):
    return next(e for e in _entries() if e.target == name)


@kernels
@pytest.mark.parametrize("target", _other_entries() if HAS_TRITON else [])
@pytest.mark.parametrize(
    "dtype,head_dim,batch,window",
    [
        pytest.param(torch.bfloat16, 64, "mixed", None, id="bf16-64-mixed"),
        pytest.param(torch.bfloat16, 64, "tile_edges", 33, id="bf16-64-tile_edges-window33"),
        pytest.param(torch.bfloat16, 256, "mixed", None, id="bf16-256-mixed"),
        pytest.param(torch.float32, 64, "mixed", None, id="fp32-64-mixed"),
        pytest.param(torch.float32, 256, "chunk_with_context", 8, id="fp32-256-chunks-window8"),
    ],
)
def test_each_targets_tiles(target, dtype, head_dim, batch, window):
    """Another GPU's tiles (its smaller blocks, fewer stages, its dot precision) compute the
    same attention: tile edges, masks and splits move with the tile sizes."""
    q_lens, seq_lens = BATCHES[batch]
    run_attend(
        q_lens,
        seq_lens,
        num_heads=8,
        num_kv_heads=2,
        head_dim=head_dim,
        dtype=dtype,
        window=window,
        seed=6,
        tuning=_entry(target),
    )


# ---- KV cache write --------------------------------------------------------------------


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("strided", [False, True])
def test_write_kv(dtype, strided):
    from octavo_triton.kv_cache import write_kv

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
    write_kv(k, v, kv_cache[0], kv_cache[1], slots)
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
    from octavo_triton.rms_norm import rms_norm

    gen = _gen(7)
    x = _rand((13, hidden), dtype, gen, scale=3.0)
    w = _rand((hidden,), dtype, gen)
    res = _rand((13, hidden), dtype, gen) if with_residual else None
    got = rms_norm(x, w, 1e-6, res)
    ref = reference.rms_norm(x.cpu(), w.cpu(), 1e-6, None if res is None else res.cpu())
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
    from octavo_triton.rotary import rotary

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
    gq, gk = rotary(q, k, positions, cos_sin)
    rq, rk = reference.rotary(q.cpu(), k.cpu(), positions.cpu(), cos_sin.cpu())
    assert torch.equal(qkv, before), "rotary must not modify its inputs"
    _close(gq, rq, dtype)
    _close(gk, rk, dtype)


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 1000] + ([11008, 14336] if FULL else []))
def test_silu_and_mul(dtype, d):
    from octavo_triton.activation import silu_and_mul

    x = _rand((2, 5, 2 * d), dtype, _gen(9), scale=4.0)
    got = silu_and_mul(x)
    ref = reference.silu_and_mul(x.cpu())
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
    from octavo_triton.gemv import gemv

    gen = _gen(10)
    x = _rand((rows, k + 8), dtype, gen)[:, 3 : k + 3]
    w = _rand((n, k), dtype, gen, scale=k**-0.5)
    b = _rand((n,), dtype, gen) if with_bias else None
    got = gemv(x, w, b)
    ref = torch.nn.functional.linear(x.cpu().float(), w.cpu().float(), None if b is None else b.cpu().float())
    assert got.shape == (rows, n) and got.dtype == dtype
    # one rounding of the float32 sum to dtype; fp32 sums in another order differ by ~k ulps
    tol = {torch.float32: 1e-4}.get(dtype, TOL[dtype][0])
    torch.testing.assert_close(got.cpu().float(), ref, atol=tol, rtol=tol)


@kernels
@pytest.mark.parametrize(
    "rows,vocab,temperature,banned",
    [(1, 100, None, 0.0), (5, 4099 * 2 + 3, 0.7, 0.5), (3, 2048, None, 0.999)]
    + ([(64, 128256, 1.3, 0.0), (2, 4096 * 31 + 1, 0.9, 0.9)] if FULL else []),
)
def test_sample(rows, vocab, temperature, banned):
    """The draw against the kit's float64 CDF: token k at u when cdf[k - 1] <= u < cdf[k] (up
    to float32 sums in another order), never a banned token; u at 0, just under 1, on the edge
    of a most likely token, and random, over vocabularies of one and of several blocks."""
    from octavo_triton.sampling import sample

    gen = _gen(11)
    logits = torch.randn(rows, vocab, generator=gen) * 4.0
    if banned:
        mask = torch.rand(rows, vocab, generator=gen) < banned
        mask[torch.arange(rows), torch.randint(0, vocab, (rows,), generator=gen)] = False  # one token stays
        logits = logits.masked_fill(mask, float("-inf"))
    temps = None if temperature is None else torch.full((rows,), temperature) + torch.rand(rows, generator=gen) * 0.2
    cdf = reference.sample_cdf(logits, temps)
    u = torch.rand(rows, generator=gen)
    u[0] = 0.0
    if rows > 1:
        u[1] = 1.0 - 2.0**-24
    if rows > 2:
        top = int(logits[2].argmax())
        u[2] = min(float(cdf[2, top]) + 1e-6, 0.5)
    got = sample(logits.to(DEVICE), None if temps is None else temps.to(DEVICE), u.to(DEVICE)).cpu()
    assert got.shape == (rows,) and got.dtype == torch.int64
    for i, k in enumerate(got.tolist()):
        assert 0 <= k < vocab and logits[i, k] > float("-inf"), (i, k)
        lo = float(cdf[i, k - 1]) if k > 0 else 0.0
        assert lo - 1e-5 <= float(u[i]) < float(cdf[i, k]) + 1e-5, (i, k, float(u[i]), lo, float(cdf[i, k]))


# ---- CI: the same tests under the interpreter ----------------------------------------------


@pytest.mark.skipif(ON_GPU or INTERPRET, reason="the kernels run directly in this process")
@pytest.mark.skipif(
    not HAS_TRITON,
    reason="triton is not installed: pip install triton to check the kernels on a CPU under its interpreter",
)
def test_kernels_under_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so run in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
