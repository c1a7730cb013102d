"""octavo-cuda's own code: discovery without a GPU, its config checks, and that its hooks reach
the shared Triton kernels (octavo_triton, tested in triton-kernels/tests) with the right
arguments.

The routing tests run where the kernels run: on a CUDA GPU, or under Triton's interpreter
(`test_routing_under_interpreter` re-runs them in a subprocess with TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"

kernels = pytest.mark.skipif(
    not (ON_GPU or (INTERPRET and HAS_TRITON)),
    reason="needs a CUDA GPU, or TRITON_INTERPRET=1 with triton installed "
    "(test_routing_under_interpreter runs them that way)",
)


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


# ---- the hooks reach the kernels -------------------------------------------------------------


@kernels
@pytest.mark.parametrize("window", [None, 8])
def test_attention_routes_decodes_and_chunks(window):
    """Decodes first, chunks after, and a decode behind a chunk: both kernels, against the
    kit's reference; write_kv's stores land where the reference's would."""
    from octavo_cuda.attention import CudaAttention
    from octavo_plugin_kit import reference
    from octavo_plugin_kit.inputs import make_attention_metadata

    gen = torch.Generator().manual_seed(0)
    q_lens, seq_lens, block_size, hk, d = [1, 1, 9, 24, 1], [40, 130, 9, 60, 3], 16, 2, 64
    meta = make_attention_metadata(seq_lens, q_lens, block_size, 24, generator=gen)
    kv = torch.randn(2, 24, block_size, hk, d, generator=gen).to(torch.bfloat16)
    q = torch.randn(sum(q_lens), 8, d, generator=gen).to(torch.bfloat16)
    k, v = torch.randn(2, sum(q_lens), hk, d, generator=gen).to(torch.bfloat16)
    expected = kv.clone()
    reference.write_kv(k, v, expected, meta.slot_mapping)

    backend = CudaAttention()
    on = {name: x.to(DEVICE) if isinstance(x, torch.Tensor) else x for name, x in vars(meta).items()}
    kv_dev = kv.to(DEVICE)
    backend.write_kv(k.to(DEVICE), v.to(DEVICE), kv_dev, on["slot_mapping"])
    assert torch.equal(kv_dev.cpu(), expected)
    out = backend.attend(q.to(DEVICE), kv_dev, type(meta)(**on), d**-0.5, window).float().cpu()
    ref = reference.attend(q.float(), expected.float(), meta, d**-0.5, window).float()
    torch.testing.assert_close(out, ref, atol=8e-2, rtol=8e-2)  # bf16: 4x the per-element tolerance


@kernels
def test_fused_ops_and_one_row_linear_route_to_the_kernels():
    from octavo_cuda import CudaPlatform
    from octavo_plugin_kit import reference
    from octavo_plugin_kit.inputs import make_cos_sin_cache
    from octavo_triton.gemv import gemv

    platform, gen, bf16 = CudaPlatform(), torch.Generator().manual_seed(1), torch.bfloat16

    def rand(*shape):
        return torch.randn(shape, generator=gen).to(bf16).to(DEVICE)

    def close(got, ref):
        torch.testing.assert_close(got.cpu(), ref.cpu(), atol=2e-2, rtol=2e-2)

    x, res, w = rand(5, 256), rand(5, 256), rand(256)
    for got, ref in zip(platform.rms_norm(x, w, 1e-6, res), reference.rms_norm(x.cpu(), w.cpu(), 1e-6, res.cpu())):
        close(got, ref)
    q, k, positions, table = rand(5, 4, 64), rand(5, 2, 64), torch.arange(5).to(DEVICE), make_cos_sin_cache(64, 16)
    for got, ref in zip(
        platform.rotary(q, k, positions, table.to(DEVICE)), reference.rotary(q.cpu(), k.cpu(), positions.cpu(), table)
    ):
        close(got, ref)
    close(platform.silu_and_mul(x), reference.silu_and_mul(x.cpu()))
    weight, bias = rand(48, 256), rand(48)
    # one row takes the Triton GEMV (gemv_max_rows); more rows take torch's linear
    assert torch.equal(platform.linear(x[:1], weight, bias).cpu(), gemv(x[:1], weight, bias).cpu())
    close(platform.linear(x[:1], weight, bias), reference.linear(x[:1].cpu(), weight.cpu(), bias.cpu()))


@pytest.mark.skipif(ON_GPU or INTERPRET, reason="the kernels run directly in this process")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: pip install triton to check the routing")
def test_routing_under_interpreter():
    """TRITON_INTERPRET must be set before triton is imported, so run in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "route", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "3 passed" in proc.stdout, proc.stdout[-3000:]
