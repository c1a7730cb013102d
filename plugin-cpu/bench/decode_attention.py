"""Decode attention time per layer: native kernel vs the torch (gather + SDPA) path.

    python plugin-cpu/bench/decode_attention.py [--batch 64] [--context 384] [--layers 1]

SmolLM2-135M shapes (9 query heads, 3 KV heads, head_dim 64), block size 16, one
process so the ratio holds on a noisy machine. `--layers 30` rotates through 30 caches (as
many as the model's layers, allocated as CpuAttention.allocate makes them), so each call reads its
KV from memory rather than from the L3, as in a real decode step.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from octavo.platform import AttentionSpec
from octavo_cpu import _native
from octavo_cpu.attention import CpuAttention
from octavo_cpu.device import CpuDevice
from octavo_plugin_kit.inputs import make_forward_batch


def bench(fn, reps: int) -> float:
    fn()
    best = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best.append((time.perf_counter() - t) / reps)
    return sorted(best)[1]  # median of 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=384)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--layers", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    b, s, bs = args.batch, args.context, args.block_size
    num_blocks = b * (-(-s // bs)) + 8
    meta = make_forward_batch([s] * b, [1] * b, bs, num_blocks)
    print(
        f"{b} requests x {s} context, {args.heads}/{args.kv_heads} heads, head_dim {args.head_dim}, "
        f"block {bs}, {torch.get_num_threads()} threads, isa {_native.isa()}"
    )
    layer = AttentionSpec(args.heads, args.kv_heads, args.head_dim, args.head_dim**-0.5)
    native = CpuAttention(CpuDevice())
    torch_path = CpuAttention(CpuDevice(), use_native=False)
    for dtype in (torch.bfloat16, torch.float32):
        q = torch.randn(b, args.heads, args.head_dim).to(dtype)
        spec = native.kv_cache_spec(layer, dtype, bs)
        caches = []
        for _ in range(args.layers):
            kv = native.allocate(layer, spec, num_blocks)
            kv.copy_(torch.randn(kv.shape).to(dtype))
            caches.append(kv)
        turn = itertools.cycle(caches)  # each call the next layer's cache
        t_torch = bench(lambda: torch_path.attend(q, next(turn), meta, layer), args.reps)
        t_native = bench(lambda: native.attend(q, next(turn), meta, layer), args.reps)
        kv_bytes = 2 * b * s * args.kv_heads * args.head_dim * caches[0].element_size()
        print(
            f"{str(dtype):15} torch {t_torch * 1e3:7.3f} ms   native {t_native * 1e3:7.3f} ms   "
            f"speed-up {t_torch / t_native:5.1f}x   native reads KV at {kv_bytes / t_native / 1e9:5.1f} GB/s"
        )


if __name__ == "__main__":
    main()
