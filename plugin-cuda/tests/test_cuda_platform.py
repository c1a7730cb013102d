"""octavo-cuda: discovery without a GPU, its availability reasons and config refusals, the
routing rules of the parts it declares (octavo_triton.platform_parts, shared with octavo-rocm
and octavo-xpu), and that those parts reach the shared Triton kernels (octavo_triton, tested
in triton-kernels/tests) with the right arguments.

The routing rules are checked on any CPU with stand-in kernels that record their calls.
The tests marked `kernels` run the real kernels where they run: on a CUDA GPU, or under
Triton's interpreter (`test_kernels_under_interpreter` re-runs them in a subprocess with
TRITON_INTERPRET=1, which must be set before triton is imported).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from octavo.platform import AttentionSpec, ForwardBatch, check_platform
from octavo_cuda import CudaPlatform
from octavo_plugin_kit.inputs import make_forward_batch

# the parts octavo-cuda declares: the shared ones of every Triton GPU (octavo_triton.platform_parts)
CudaAttention = CudaPlatform.attention_cls
CudaDevice = CudaPlatform.device_cls
CudaLinearMethod = CudaPlatform.linear_cls
CudaModelRunner = CudaPlatform.runner_cls

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"

kernels = pytest.mark.skipif(
    not (ON_GPU or (INTERPRET and HAS_TRITON)),
    reason="needs a CUDA GPU, or TRITON_INTERPRET=1 with triton installed "
    "(test_kernels_under_interpreter runs them that way)",
)


def _spec(head_dim=128, window=None, causal=True, heads=(8, 2)) -> AttentionSpec:
    return AttentionSpec(heads[0], heads[1], head_dim, head_dim**-0.5, sliding_window=window, causal=causal)


def _leading_q_len_1(q_lens) -> int:
    """The decode kernel's share of a batch, by its definition: requests before the first
    whose q_len is not 1."""
    return next((i for i, q in enumerate(q_lens) if q != 1), len(q_lens))


def _on(batch: ForwardBatch, device) -> ForwardBatch:
    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return ForwardBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


# ---- discovery, availability, config -------------------------------------------------------


def test_platform_imports_without_gpu_or_triton():
    """Discovery imports the plugin and builds the platform everywhere: that must need neither
    triton nor a GPU, and must not initialize CUDA."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any import of triton would now fail
        "import torch\n"
        "from octavo_cuda import CudaPlatform\n"
        "a = CudaPlatform.availability(); p = CudaPlatform()\n"
        "assert not torch.cuda.is_initialized()\n"
        "print(a.score, a.reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    score, reason = proc.stdout.split(" ", 1)
    if not torch.cuda.is_available():
        assert score == "0" and reason.strip()


def test_the_platform_keeps_the_contract():
    assert check_platform(CudaPlatform) == []
    assert CudaPlatform.scheduling.async_scheduling
    assert CudaPlatform.scheduling.default_max_num_batched_tokens == 8192


@pytest.mark.parametrize(
    "hip,cuda,visible,triton_ok,why",
    [
        ("6.2", "12.8", True, True, "ROCm"),
        (None, None, True, True, "without CUDA"),
        (None, "12.8", False, True, "no CUDA GPU visible"),
        (None, "12.8", True, False, "triton is not importable"),
    ],
)
def test_availability_says_why_not(monkeypatch, hip, cuda, visible, triton_ok, why):
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    if not triton_ok:
        monkeypatch.setitem(sys.modules, "triton", None)
    a = CudaPlatform.availability()
    assert a.score == 0 and why in a.reason, a


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_availability_with_a_gpu_and_triton(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    a = CudaPlatform.availability()
    assert a.score > 0 and "2 CUDA device(s)" in a.reason and "triton" in a.reason, a


def test_supports_says_why_not():
    att = CudaAttention(CudaDevice())
    assert att.supports(_spec(128), torch.bfloat16, 16) is None
    assert att.supports(_spec(64, window=4096), torch.float32, 8) is None
    assert "block size 12" in att.supports(_spec(128), torch.bfloat16, 12)
    assert "block size 4" in att.supports(_spec(128), torch.bfloat16, 4)
    assert "head size 80" in att.supports(_spec(80), torch.bfloat16, 16)
    assert "float64" in att.supports(_spec(128), torch.float64, 16)
    assert att.supports(_spec(128, causal=False), torch.bfloat16, 16) is None  # encoders: the non-causal prefill
    assert "non-causal" in att.supports(_spec(128, window=64, causal=False), torch.bfloat16, 16)


def test_old_gpus_are_refused_with_the_capability_needed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ValueError, match=r"compute capability >= 8\.0; Tesla T4 has 7\.5"):
        CudaPlatform().check_and_update_config(SimpleNamespace())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    CudaPlatform().check_and_update_config(SimpleNamespace())


def test_default_dtype_keeps_half_precision_and_prefers_bf16():
    device = CudaDevice()
    assert device.default_dtype(torch.float16) == torch.float16
    assert device.default_dtype(torch.bfloat16) == torch.bfloat16
    assert device.default_dtype(torch.float32) == torch.bfloat16
    assert device.default_dtype(None) == torch.bfloat16
    assert device.dist_backend == "nccl" and device.type == "cuda"


# ---- routing rules (stand-in kernels that record their calls) -------------------------------


@pytest.fixture
def launches(monkeypatch):
    """Replace octavo_triton's launchers with recorders: [(kernel name, arguments)]."""
    calls: list[tuple[str, tuple]] = []
    for module, name in [
        ("decode_attention", "decode_attention"),
        ("prefill_attention", "prefill_attention"),
        ("gemv", "gemv"),
    ]:
        fake = types.ModuleType(f"octavo_triton.{module}")
        setattr(fake, name, lambda *args, _name=name, **kwargs: calls.append((_name, args)))
        monkeypatch.setitem(sys.modules, f"octavo_triton.{module}", fake)
    return calls


@pytest.mark.parametrize(
    "q_lens",
    [[1, 1, 9, 24, 1], [9, 1, 1, 24, 1], [1, 1, 1], [5], [7, 1]],
    ids=["decodes-first", "decodes-after-a-chunk", "decodes-only", "prefill-only", "chunk-then-decode"],
)
def test_leading_decodes_take_the_decode_kernel_the_rest_the_prefill_kernel(launches, q_lens):
    """The decode kernel reads request i's query at row i, so it takes only the requests before
    the first chunk; one launch per kernel at most. The batch's device tensors are on the meta
    device: `build_metadata` may read only the host lists (a read-back would wait for the GPU)."""
    seq_lens = [q + 30 for q in q_lens]
    batch = make_forward_batch(seq_lens, q_lens, 16, 64, device="meta")
    att = CudaAttention(CudaDevice())
    meta = att.build_metadata(batch)
    nd = _leading_q_len_1(q_lens)
    assert meta.num_decodes == nd
    q = torch.empty(sum(q_lens), 8, 64, device="meta")
    att.attend(q, torch.empty(2, 64, 16, 2, 64, device="meta"), meta, _spec(64, window=8))
    names = [name for name, _ in launches]
    assert names == ["decode_attention"] * (nd > 0) + ["prefill_attention"] * (nd < len(q_lens))
    for name, args in launches:
        if name == "decode_attention":
            assert args[6] == nd and args[7] == max(seq_lens) and args[9] == 8
        else:  # the requests from nd on, with their absolute query rows
            assert args[4].shape[0] == len(q_lens) - nd and args[6].shape[0] == len(q_lens) - nd + 1
            assert args[7] == sum(q_lens) - nd and args[8] == max(q_lens) and args[10] == 8


def test_one_row_takes_the_gemv_more_rows_take_cublas(launches):
    method = CudaLinearMethod(CudaDevice())
    layer = torch.nn.Module()
    method.create_weights(layer, 32, 16, bias=True)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(3, 32)
    method.apply(layer, x[:1])
    assert [name for name, _ in launches] == ["gemv"]
    launches.clear()
    for rows in (x[:2], x, x[None]):
        torch.testing.assert_close(
            method.apply(layer, rows), torch.nn.functional.linear(rows, layer.weight, layer.bias)
        )
    assert launches == []


def test_warm_up_batches_cover_each_length_class_under_the_token_budget():
    def batches(max_len, max_seqs, budget):
        config = SimpleNamespace(
            model=SimpleNamespace(max_model_len=max_len),
            scheduler=SimpleNamespace(max_num_seqs=max_seqs, max_num_batched_tokens=budget),
        )
        return CudaModelRunner.warm_up_batches(SimpleNamespace(config=config))

    for max_len, max_seqs, budget in [(4096, 256, 8192), (1024, 16, 2048), (256, 512, 300)]:
        shapes = batches(max_len, max_seqs, budget)
        for q_lens, seq_lens in shapes:
            assert sum(q_lens) <= budget and len(q_lens) == len(seq_lens)
            assert all(1 <= q <= s <= max_len for q, s in zip(q_lens, seq_lens))
            assert _leading_q_len_1(q_lens) >= 1  # each batch compiles the decode kernel too
        decodes = [s for q_lens, seq_lens in shapes for q, s in zip(q_lens, seq_lens) if q == 1]
        chunks = {q for q_lens, _ in shapes for q in q_lens if q > 1}
        assert max_len in decodes  # a decode over the longest context: the most splits
        assert max(len(q) for q, _ in shapes) >= min(max_seqs, budget - 128)  # a full batch of decodes
        assert chunks >= {2, 5, 9, 128}  # prefill chunks of each length class


# ---- the parts reach the kernels --------------------------------------------------------------


@kernels
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("q_lens,seq_lens", [([1, 1, 9, 24, 1], [40, 130, 9, 60, 3]), ([9, 1, 24, 1], [9, 130, 60, 3])])
def test_attention_routes_decodes_and_chunks(window, q_lens, seq_lens):
    """Decodes first, chunks after, and a decode behind a chunk; then a chunk first, so no
    decode leads: both kernels, against the kit's reference; write_kv's stores land where the
    reference's would."""
    from octavo_plugin_kit import reference

    gen = torch.Generator().manual_seed(0)
    block_size, hk, d = 16, 2, 64
    batch = make_forward_batch(seq_lens, q_lens, block_size, 24, generator=gen)
    kv = torch.randn(2, 24, block_size, hk, d, generator=gen).to(torch.bfloat16)
    q = torch.randn(sum(q_lens), 8, d, generator=gen).to(torch.bfloat16)
    k, v = torch.randn(2, sum(q_lens), hk, d, generator=gen).to(torch.bfloat16)
    expected = kv.clone()
    reference.write_kv(k, v, expected, batch.slot_mapping)

    backend = CudaAttention(CudaDevice())
    meta = backend.build_metadata(_on(batch, DEVICE))
    assert meta.num_decodes == _leading_q_len_1(q_lens)
    kv_dev = kv.to(DEVICE)
    backend.write_kv(k.to(DEVICE), v.to(DEVICE), kv_dev, meta)
    assert torch.equal(kv_dev.cpu(), expected)
    out = backend.attend(q.to(DEVICE), kv_dev, meta, _spec(d, window)).float().cpu()
    ref = reference.attend(q.float(), expected.float(), batch, d**-0.5, window).float()
    torch.testing.assert_close(out, ref, atol=8e-2, rtol=8e-2)  # bf16: 4x the per-element tolerance


@kernels
def test_fused_ops_and_one_row_linear_route_to_the_kernels():
    from octavo_plugin_kit import reference
    from octavo_plugin_kit.inputs import make_cos_sin_cache
    from octavo_triton.gemv import gemv

    platform, gen, bf16 = CudaPlatform(), torch.Generator().manual_seed(1), torch.bfloat16

    def rand(*shape):
        return torch.randn(shape, generator=gen).to(bf16).to(DEVICE)

    def close(got, ref):
        torch.testing.assert_close(got.cpu(), ref.cpu(), atol=2e-2, rtol=2e-2)

    ops = platform.ops
    x, res, w = rand(5, 256), rand(5, 256), rand(256)
    for got, ref in zip(ops.rms_norm(x, w, 1e-6, res), reference.rms_norm(x.cpu(), w.cpu(), 1e-6, res.cpu())):
        close(got, ref)
    q, k, positions, table = rand(5, 4, 64), rand(5, 2, 64), torch.arange(5).to(DEVICE), make_cos_sin_cache(64, 16)
    for got, ref in zip(
        ops.rotary(q, k, positions, table.to(DEVICE)), reference.rotary(q.cpu(), k.cpu(), positions.cpu(), table)
    ):
        close(got, ref)
    close(ops.silu_and_mul(x), reference.silu_and_mul(x.cpu()))
    layer = torch.nn.Module()
    layer.weight, layer.bias = rand(48, 256), rand(48)
    # one row takes the Triton GEMV (GEMV_MAX_ROWS); more rows take torch's linear
    assert torch.equal(platform.linear.apply(layer, x[:1]).cpu(), gemv(x[:1], layer.weight, layer.bias).cpu())
    close(platform.linear.apply(layer, x[:1]), reference.linear(x[:1].cpu(), layer.weight.cpu(), layer.bias.cpu()))


@pytest.mark.skipif(ON_GPU or INTERPRET, reason="the kernels run directly in this process")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: pip install triton to check the routing")
def test_kernels_under_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so run in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "route", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "5 passed" in proc.stdout, proc.stdout[-3000:]
