"""The `octavo` command line: plugins, generate, bench throughput."""

import json
import subprocess
import sys


def octavo(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "octavo.entrypoints.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_plugins_lists_cpu_with_score_and_reason():
    r = octavo("plugins")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("cpu"))
    assert "octavo-cpu" in line and "yes" in line and "usable cores" in line
    assert "native kernels (" in line, "octavo-cpu's compiled kernels did not build or import"
    data = json.loads(octavo("plugins", "--json").stdout)
    cpu = next(d for d in data if d["name"] == "cpu")
    from octavo_cpu.platform import CpuPlatform

    assert cpu["usable"] and cpu["score"] > 0 and cpu["api_version"] == CpuPlatform.api_version  # what it declares


def test_generate_with_the_default_model():
    r = octavo(
        "generate",
        "The capital of France is",
        "--dtype",
        "float32",
        "--max-tokens",
        "4",
        "--max-model-len",
        "256",
        "--kv-cache-memory",
        "64MiB",
    )
    assert r.returncode == 0, r.stderr
    assert "The capital of France is Paris." in r.stdout


def test_unknown_device_is_one_clear_line():
    # (a device no plugin of this repository provides: octavo-rocm ships rocm now)
    r = octavo("generate", "hi", "--device", "metal")
    assert r.returncode == 2
    assert "no plugin provides device 'metal'" in r.stderr and "pip install octavo-metal" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_throughput_json_on_dummy_weights(tmp_path, tiny_model_dirs):
    out = tmp_path / "bench.json"
    r = octavo(
        "bench",
        "throughput",
        "--model",
        tiny_model_dirs["qwen3"],
        "--load-format",
        "dummy",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--num-prompts",
        "6",
        "--input-len",
        "20",
        "--output-len",
        "8",
        "--compare",
        "hf",
        "--hf-batch-size",
        "4",
        "--kv-cache-memory",
        "32MiB",
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    for side in ("octavo", "hf"):
        for key in ("elapsed_s", "requests_per_s", "output_tokens_per_s", "total_tokens_per_s"):
            assert data[side][key] > 0
        assert data[side]["output_tokens"] == 6 * 8
    assert abs(data["ratio"] - data["octavo"]["output_tokens_per_s"] / data["hf"]["output_tokens_per_s"]) < 1e-9
    assert "ratio:" in r.stdout


def test_cpu_kv_cache_is_zero_and_costs_no_memory_until_used():
    import resource

    import torch

    from octavo.platform import AttentionSpec, resolve_platform

    p = resolve_platform("cpu")
    layer = AttentionSpec(num_heads=8, num_kv_heads=8, head_dim=64, scale=0.125)
    spec = p.attention.kv_cache_spec(layer, torch.bfloat16, 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kv = p.attention.allocate(layer, spec, 4096)  # 128 MiB
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert kv.shape == (2, 4096, 16, 8, 64) and kv.dtype == torch.bfloat16
    assert (after - before) * 1024 < 32 * 2**20  # not written at allocation (ru_maxrss is in KiB)
    assert not kv[:, ::97].any()  # and reads back as zeros
