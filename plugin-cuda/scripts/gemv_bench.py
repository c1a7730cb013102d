"""Decode-shaped linears on the GPU: cuBLAS (torch) against octavo_triton's GEMV.

`python3 gemv_bench.py [--rows 1,2,4] [--sweep]`. Llama-3.1-8B shapes, bf16. Each shape
runs over 32 distinct weights (as the 32 layers do), captured in one CUDA graph, so
nothing is served from L2 and launch gaps are what a decode graph has. Prints each
variant's time per layer and the bandwidth it reaches (weight bytes / time), next to the
device-to-device copy rate that the G2 floor uses (bytes read + written). `--sweep` also
times a grid of block shapes per weight.
"""

import argparse
import os
import statistics

import torch
import torch.nn.functional as F

from octavo_triton import dependent_launch
from octavo_triton.gemv import gemv, pick_blocks
from octavo_triton.tuning import for_device

ap = argparse.ArgumentParser()
ap.add_argument("--rows", default="1,2,4,8")
ap.add_argument("--sweep", action="store_true")
ap.add_argument("--layers", type=int, default=32)
args = ap.parse_args()
dev = torch.device("cuda")
dt = torch.bfloat16
torch.manual_seed(0)


def graph_time(fn, reps=20):
    """Median seconds of one replay of a graph that calls fn once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # compile / pick algorithms outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


# the floor's bandwidth: a 1 GiB device-to-device copy, bytes read + written
src = torch.empty(1 << 29, dtype=dt, device=dev)
dst = torch.empty_like(src)
copy_s = graph_time(lambda: dst.copy_(src))  # noqa: F821 - deleted below, after use
copy_bw = 2 * src.numel() * 2 / copy_s
print(f"copy: {copy_bw / 1e12:.3f} TB/s (read + written)")
del src, dst

shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
L = args.layers
weights = {name: [torch.randn(n, k, dtype=dt, device=dev) * 0.02 for _ in range(L)] for name, (n, k) in shapes.items()}
lm_head = torch.randn(128256, 4096, dtype=dt, device=dev) * 0.02
total_bytes = sum(w.numel() * 2 for ws in weights.values() for w in ws) + lm_head.numel() * 2

for m in [int(r) for r in args.rows.split(",")]:
    print(f"\n== rows {m}")
    xs = {k: torch.randn(m, k, dtype=dt, device=dev) for k in (4096, 14336)}
    # correctness against torch in float32
    for name, (_, k) in shapes.items():
        w = weights[name][0]
        ref = F.linear(xs[k].float(), w.float())
        err = (gemv(xs[k], w).float() - ref).abs().max().item()
        assert err < 0.02 * ref.abs().max().item() + 1e-2, (name, err)
    for name, (n, k) in list(shapes.items()) + [("lm_head", (128256, 4096))]:
        ws = weights[name] if name != "lm_head" else [lm_head]
        x = xs[k]
        nbytes = sum(w.numel() * 2 for w in ws)
        t_cublas = graph_time(lambda: [F.linear(x, w) for w in ws])
        t_ours = graph_time(lambda: [gemv(x, w) for w in ws])
        line = (
            f"{name:8s} {n:6d}x{k:5d}: cuBLAS {t_cublas / len(ws) * 1e6:7.1f} us ({nbytes / t_cublas / 1e12:.2f} TB/s)"
            f"  triton {pick_blocks(n, k, for_device(dev))} {t_ours / len(ws) * 1e6:7.1f} us ({nbytes / t_ours / 1e12:.2f} TB/s)"
        )
        print(line, flush=True)
        if args.sweep and m == 1:
            best = []
            for bn in (1, 2, 4, 8, 16):
                for bk in (256, 512, 1024, 2048):
                    for nw in (2, 4, 8):
                        if bn * bk // (32 * nw) < 8 or bn * bk > 16384:
                            continue  # under one 16-byte load a thread, or too many registers
                        t = graph_time(lambda: [gemv(x, w, blocks=(bn, bk, nw)) for w in ws], reps=10)
                        best.append((t, bn, bk, nw))
            best.sort()
            print("   best:", "; ".join(f"({bn},{bk},{nw}) {nbytes / t / 1e12:.2f} TB/s" for t, bn, bk, nw in best[:5]))

    def model(linear):
        def run():
            for i in range(L):
                for name, (_, k) in shapes.items():
                    linear(xs[k], weights[name][i])
            linear(xs[4096], lm_head)

        return run

    t_cublas = graph_time(model(F.linear), reps=10)
    print(
        f"all linears of a step ({total_bytes / 1e9:.2f} GB): cuBLAS {t_cublas * 1e3:.3f} ms "
        f"({total_bytes / t_cublas / 1e12:.2f} TB/s, {total_bytes / copy_bw / t_cublas:.1%} of copy floor)"
    )
    # the Triton GEMV with and without programmatic dependent launch (where the target has it)
    for pdl in ("0", "1", "0", "1"):
        os.environ[dependent_launch.ENV] = pdl
        t_ours = graph_time(model(gemv), reps=10)
        print(
            f"   triton, {dependent_launch.ENV}={pdl}: {t_ours * 1e3:.3f} ms ({total_bytes / t_ours / 1e12:.2f} TB/s, "
            f"{total_bytes / copy_bw / t_ours:.1%} of copy floor)"
        )
    os.environ.pop(dependent_launch.ENV)
