"""Small-M linear (decode GEMV): native kernel vs torch.nn.functional.linear, weights out of cache.

    python plugin-cpu/bench/dense_linear.py [--dtype bf16] [--m 1,2,4,8,16] [--shapes qkv,o,gate_up,down,lm_head]

SmolLM2-135M shapes. A real decode step reads each layer's weights once, from memory, so
every timed call here gets a different copy of the weight, enough copies to exceed the L3
cache several times (`--working-set` MB). Native and torch alternate call by call on the
same inputs in one process, so the ratio holds on a noisy machine; medians are quoted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from octavo_cpu import _native

SHAPES = {  # name: (K, N)
    "qkv": (576, 960),
    "o": (576, 576),
    "gate_up": (576, 3072),
    "down": (1536, 576),
    "lm_head": (576, 49152),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def run(k: int, n: int, m: int, dtype, working_set_mb: int, rounds: int) -> tuple[float, float, float]:
    """Median seconds per call of (torch, native) and the weight bytes per call."""
    w_bytes = n * k * torch.empty((), dtype=dtype).element_size()
    copies = max(2, -(-working_set_mb * 2**20 // w_bytes))
    ws = [(torch.randn(n, k) * k**-0.5).to(dtype) for _ in range(copies)]
    x = torch.randn(m, k).to(dtype)
    times = {"torch": [], "native": []}
    fns = {"torch": lambda w: torch.nn.functional.linear(x, w), "native": lambda w: _native.linear(x, w)}
    for fn in fns.values():  # warm up (and fault in) once
        for w in ws:
            fn(w)
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for w in ws:
                fn(w)
            times[name].append((time.perf_counter() - t) / copies)
    return statistics.median(times["torch"]), statistics.median(times["native"]), w_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--m", default="1,2,4,8,16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--working-set", type=int, default=160, help="MB of distinct weights per shape (> L3)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    print(
        f"isa {_native.isa()}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"working set {args.working_set} MB per shape"
    )
    print(
        f"{'shape':>8} {'K':>5} {'N':>6} {'M':>3} {'torch us':>9} {'native us':>9} {'torch GB/s':>10} "
        f"{'native GB/s':>11} {'speedup':>7}"
    )
    for name in args.shapes.split(","):
        k, n = SHAPES[name]
        for m in map(int, args.m.split(",")):
            t_torch, t_native, w_bytes = run(k, n, m, dtype, args.working_set, args.rounds)
            print(
                f"{name:>8} {k:5d} {n:6d} {m:3d} {t_torch * 1e6:9.1f} {t_native * 1e6:9.1f} "
                f"{w_bytes / t_torch / 1e9:10.1f} {w_bytes / t_native / 1e9:11.1f} {t_torch / t_native:6.2f}x"
            )


if __name__ == "__main__":
    main()
