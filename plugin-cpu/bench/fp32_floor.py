"""The fp32 batch-1 floor: one decode token's weight reads (SmolLM2-135M: 30 layers + lm_head, 538 MB)
through octavo's GEMV, through torch's linear (what Hugging Face runs), and a plain read of the same
bytes (torch's sum: what the cores can stream). Rounds alternate so a loaded machine hits all three.

    .venv/bin/python plugin-cpu/bench/fp32_floor.py [--threads 2] [--rounds 5]

Prints the median ms per token and GB/s of each, and the tok/s each would allow if weights were all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from octavo_cpu import _native

# SmolLM2-135M: hidden 576, 9 query / 3 KV heads of 64, intermediate 1536, 30 layers, vocab 49152
HIDDEN, KV, INTER, LAYERS, VOCAB = 576, 192, 1536, 30, 49152
LAYER_SHAPES = [(HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = [torch.randn(n, k) for _ in range(LAYERS) for n, k in LAYER_SHAPES] + [torch.randn(VOCAB, HIDDEN)]
    total = sum(w.numel() * w.element_size() for w in weights)
    inputs = {k: torch.randn(1, k) for k in (HIDDEN, INTER)}

    # per shape (qkv, o, gate_up, down, lm_head): which GEMV streams fp32 faster
    shapes = [*LAYER_SHAPES, (VOCAB, HIDDEN)]
    groups = {shape: [w for w in weights if tuple(w.shape) == shape] for shape in shapes}
    runs = {
        "octavo GEMV": lambda ws: [_native.linear(inputs[w.shape[1]], w) for w in ws],
        "torch linear": lambda ws: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in ws],
        "read (sum)": lambda ws: [w.sum() for w in ws],
    }
    times = {(name, shape): [] for name in runs for shape in shapes}
    for _ in range(args.rounds):
        for shape, ws in groups.items():
            for name, fn in runs.items():
                start = time.perf_counter()
                fn(ws)
                times[name, shape].append(time.perf_counter() - start)
    print(f"isa {_native.isa()}, {args.threads} threads, {total / 1e6:.0f} MB of fp32 weights a token")
    for name in runs:
        per_shape = {shape: statistics.median(times[name, shape]) for shape in shapes}
        t = sum(per_shape.values())
        detail = "  ".join(f"{n}x{k} {per_shape[n, k] * 1e3:.1f}" for n, k in shapes)
        print(
            f"{name:13s} {t * 1e3:6.1f} ms {total / t / 1e9:5.1f} GB/s ({1 / t:5.1f} tok/s if weights were all); ms: {detail}"
        )


if __name__ == "__main__":
    main()
