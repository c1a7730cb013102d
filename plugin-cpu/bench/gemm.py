"""Linear at decode, batched-decode and prefill row counts: torch (oneDNN / MKL), oneDNN on a
prepacked weight, and the native packed GEMM (octavo_cpu.gemm) at the running ISA level, GFLOP/s.

    python plugin-cpu/bench/gemm.py [--m 1,64,512,2048] [--shapes qkv,o,gate_up,down,lm_head] [--hot]
                                    [--dtype bfloat16|float32]

OCTAVO_CPU_ISA picks the native level (amx against avx512_bf16, say); torch follows
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS and ATEN_CPU_CAPABILITY (benchmarks/cpu_workloads.sh
sets the four together). SmolLM2-135M shapes (x [M, K] @ W[N, K]^T). A real forward meets each
layer's weights once, so by default every timed call gets a different copy of the weight, enough
copies to exceed the L3 cache (`--working-set` MB); `--hot` reuses one copy (the compute-bound
ceiling). The three run call by call on the same inputs in one process, so their ratio holds on
a noisy machine; medians are quoted. lm_head runs at M=64 only (logits of a 64-request decode step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from octavo_cpu import _native, gemm

SHAPES = {  # name: (K, N)
    "qkv": (576, 960),
    "o": (576, 576),
    "gate_up": (576, 3072),
    "down": (1536, 576),
    "lm_head": (576, 49152),
}


def run(k: int, n: int, m: int, working_set_mb: int, rounds: int, dtype: torch.dtype) -> dict[str, float]:
    """Median GFLOP/s per variant."""
    size = torch.finfo(dtype).bits // 8
    copies = 1 if working_set_mb == 0 else max(2, -(-working_set_mb * 2**20 // (n * k * size)))
    ws = [(torch.randn(n, k) * k**-0.5).to(dtype) for _ in range(copies)]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, m) for w in ws]
    ours = [gemm.pack(w) for w in ws]
    x = torch.randn(m, k).to(dtype)
    fns = {
        "torch": lambda i: torch.nn.functional.linear(x, ws[i]),
        "onednn-packed": lambda i: torch.ops.mkldnn._linear_pointwise(x, onednn[i], None, "none", [], ""),
        "native": lambda i: gemm.linear(x, ours[i], n),
    }
    ref = torch.nn.functional.linear(x, ws[0]).float()
    for name, fn in fns.items():  # warm up, fault in, and check the variants agree
        for i in range(copies):
            fn(i)
        err = (fn(0).float() - ref).abs().max().item()
        assert err <= 0.02 * ref.abs().max().item(), f"{name} differs from torch by {err}"
    calls = max(copies, -(-4 * copies // max(1, m // 64)))  # ~fixed work per sample
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for c in range(calls):
                fn(c % copies)
            times[name].append((time.perf_counter() - t) / calls)
    return {name: 2.0 * m * n * k / statistics.median(t) / 1e9 for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="64,512,2048")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--working-set", type=int, default=96, help="MB of distinct weights per shape (> L3)")
    ap.add_argument("--hot", action="store_true", help="one weight copy, reused (in cache)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    assert gemm.available(), "the native GEMM needs the native kernels"
    dtype = getattr(torch, args.dtype)
    ws = 0 if args.hot else args.working_set
    where = "hot weights" if ws == 0 else f"working set {ws} MB"
    print(f"{torch.get_num_threads()} threads, {args.dtype}, native {_native.isa()}, {where}; GFLOP/s")
    print(
        f"{'shape':>8} {'K':>5} {'N':>6} {'M':>5} {'torch':>7} {'onednn-packed':>13} {'native':>7} {'native/torch':>12}"
    )
    for name in args.shapes.split(","):
        k, n = SHAPES[name]
        for m in [64] if name == "lm_head" else map(int, args.m.split(",")):
            r = run(k, n, m, ws, args.rounds, dtype)
            print(
                f"{name:>8} {k:5d} {n:6d} {m:5d} {r['torch']:7.0f} {r['onednn-packed']:13.0f} {r['native']:7.0f} "
                f"{r['native'] / r['torch']:11.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
