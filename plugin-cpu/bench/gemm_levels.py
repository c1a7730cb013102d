"""The packed GEMM at several ISA levels against torch's linear, in one process, GFLOP/s.

    OMP_NUM_THREADS=1 python plugin-cpu/bench/gemm_levels.py amx,avx512_bf16 bfloat16 1,64,1024

Each level packs its own copies of SmolLM2's qkv, gate_up and down weights (8 copies a shape);
per round every variant makes the same calls in turn, so the ratios hold on a loaded machine;
medians of 5 rounds. torch follows ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS /
ATEN_CPU_CAPABILITY, set before the process starts (as benchmarks/cpu_workloads.sh does).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from octavo_cpu import _native, gemm

SHAPES = {"qkv": (576, 960), "gate_up": (576, 3072), "down": (1536, 576)}  # name: (K, N)
COPIES = 8


def main() -> None:
    levels, dtype = sys.argv[1].split(","), getattr(torch, sys.argv[2])
    rows = [int(m) for m in sys.argv[3].split(",")]
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {sys.argv[2]}; GFLOP/s")
    for name, (k, n) in SHAPES.items():
        ws = [(torch.randn(n, k) * k**-0.5).to(dtype) for _ in range(COPIES)]
        packed = {}
        for level in levels:
            _native.set_isa(level)
            packed[level] = [gemm.pack(w) for w in ws]
        for m in rows:
            x = torch.randn(m, k).to(dtype)
            times: dict[str, list[float]] = {v: [] for v in [*levels, "torch"]}
            calls = max(8, 2048 // m)
            for _ in range(5):
                for v in times:
                    if v != "torch":
                        _native.set_isa(v)
                    t = time.perf_counter()
                    for c in range(calls):
                        if v == "torch":
                            torch.nn.functional.linear(x, ws[c % COPIES])
                        else:
                            gemm.linear(x, packed[v][c % COPIES], n)
                    times[v].append((time.perf_counter() - t) / calls)
            flops = {v: 2 * m * n * k / statistics.median(t) / 1e9 for v, t in times.items()}
            print(f"{name:8s} M={m:5d} " + " ".join(f"{v}={g:7.1f}" for v, g in flops.items()), flush=True)


if __name__ == "__main__":
    main()
