"""Paged attention time through `CpuAttention.attend` at SmolLM2-135M shapes.

    python plugin-cpu/bench/attention.py [--kernels auto,simple] [--dtype bf16] [--reps 3]

9 query heads, 3 KV heads, head_dim 64, block size 16, torch's thread count. Each case
runs with its KV blocks scattered through the cache (a random permutation of block ids,
as a long-running server's block pool hands them out). With several kernels named, each
case runs them back to back in one process, round-robin, and reports the median of
`--reps` rounds for each, so the ratio holds on a noisy shared machine. Times are medians of
single calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from octavo.platform import AttentionSpec, ForwardBatch
from octavo_cpu import _native
from octavo_cpu.attention import CpuAttention
from octavo_cpu.device import CpuDevice

HQ, HK, D, BS = 9, 3, 64, 16
# (query lengths, context lengths, calls per timing): prefill chunks, a big decode batch,
# one long decode, mid-size chunks behind a longer context
CASES = [
    ([256] * 8, [256] * 8, 5),
    ([256] * 8, [512] * 8, 3),
    ([1] * 64, [300] * 64, 50),
    ([1] * 1, [400] * 1, 200),
    ([32] * 32, [544] * 32, 5),
]


def make_case(lens_q, lens_ctx, dtype, head_dim, scatter: bool, gen: torch.Generator):
    nb_per = [-(-c // BS) for c in lens_ctx]
    nb = sum(nb_per) + 1
    kv = torch.randn(2, nb, BS, HK, head_dim, generator=gen).to(dtype)
    ids = torch.randperm(nb - 1, generator=gen) + 1 if scatter else torch.arange(1, nb)
    tables = torch.zeros(len(lens_q), max(nb_per), dtype=torch.int32)
    o = 0
    for i, n in enumerate(nb_per):
        tables[i, :n] = ids[o : o + n]
        o += n
    qsl = [0]
    for n in lens_q:
        qsl.append(qsl[-1] + n)
    q = torch.randn(qsl[-1], HQ, head_dim, generator=gen).to(dtype)
    meta = ForwardBatch(
        input_ids=torch.zeros(qsl[-1], dtype=torch.int64),
        positions=torch.tensor([p for n, c in zip(lens_q, lens_ctx) for p in range(c - n, c)]),
        slot_mapping=torch.zeros(qsl[-1], dtype=torch.int64),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(lens_ctx, dtype=torch.int32),
        block_tables=tables,
        max_query_len=max(lens_q),
        max_seq_len=max(lens_ctx),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=list(lens_ctx),
    )
    return q, kv, meta


def time_calls(fn, calls: int, clock) -> list[float]:
    """Each call timed on its own: on a shared machine a call that loses a core to a
    neighbour for a scheduler slice (milliseconds) would swamp a mean."""
    out = []
    for _ in range(calls):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", default="auto", help="comma-separated: auto, rows (the per-row kernel)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--head-dim", type=int, default=D)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by the process's CPU time, not wall time (with --threads 1; with more "
        "it counts waiting threads' spinning too); coarse for calls under ~1 ms",
    )
    ap.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="of the single-call times: min shows what the kernel does when no neighbour takes a core away mid-call",
    )
    ap.add_argument("--contiguous", action="store_true", help="blocks in table order instead of scattered")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    kernels = args.kernels.split(",")
    clock = time.process_time if args.cpu_time else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    print(
        f"{torch.get_num_threads()} threads, isa {_native.isa()}, {args.dtype}, head_dim {args.head_dim}, "
        f"{'contiguous' if args.contiguous else 'scattered'} blocks, {args.stat} {'CPU' if args.cpu_time else 'wall'} "
        "time of single calls"
    )
    backend = CpuAttention(CpuDevice())
    layer = AttentionSpec(HQ, HK, args.head_dim, 0.125)
    for lens_q, lens_ctx, calls in CASES:
        q, kv, meta = make_case(lens_q, lens_ctx, dtype, args.head_dim, not args.contiguous, gen)
        flop = sum(4 * HQ * args.head_dim * (c * n - n * (n - 1) / 2) for n, c in zip(lens_q, lens_ctx))
        times = {k: [] for k in kernels}
        for _ in range(args.reps):
            for k in kernels:
                _native.ATTENTION_KERNEL = k
                backend.attend(q, kv, meta, layer)  # warm
                times[k] += time_calls(lambda: backend.attend(q, kv, meta, layer), calls, clock)
        _native.ATTENTION_KERNEL = "auto"
        row = f"q={lens_q[0]:>3} x{len(lens_q):<3} ctx={lens_ctx[0]:<4}"
        stat = statistics.median if args.stat == "median" else min
        base = stat(times[kernels[0]])
        for k in kernels:
            t = stat(times[k])
            row += f" | {k}: {t * 1e3:7.3f} ms {flop / t / 1e9:6.1f} GFLOP/s"
            if k != kernels[0]:
                row += f" ({t / base:.2f}x of {kernels[0]})"
        print(row, flush=True)


if __name__ == "__main__":
    main()
