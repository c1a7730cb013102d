"""End-to-end A/B of the native GEMM (octavo_cpu.gemm) on `octavo bench throughput`'s workload.

    python plugin-cpu/bench/gemm_throughput.py [--rounds 3] [--num-prompts 64 --input-len 256 --output-len 128]

Two engines in one process (SmolLM2, bf16, CPU), one loaded with gemm.ENABLED = False (its
linears keep the checkpoint's weights: the GEMV for decode rows, torch's linear above) and one
with the native GEMM (weights packed at load), run the workload alternately, `--rounds` times
each, so both meet the same machine state; each run gets a fresh random workload of the same
shape (a new seed: the prefix cache gives it nothing). Prints output tok/s per run and the medians.
"""

from __future__ import annotations

import argparse
import statistics

from octavo.entrypoints.bench_throughput import make_workload, run_octavo
from octavo.entrypoints.llm import LLM
from octavo_cpu import gemm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    llms = {}
    for enabled in (False, True):
        gemm.ENABLED = enabled  # read when the engine loads (and packs) its weights
        llms[enabled] = LLM(model="smollm2", device="cpu", dtype="bfloat16", kv_cache_memory="2GiB")
    engine = llms[True].llm_engine
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for enabled in (False, True):
            w = make_workload(
                engine.tokenizer,
                engine.vocab_size,
                args.num_prompts,
                args.input_len,
                args.output_len,
                "random",
                seed=1000 * r + enabled,
            )
            res, _ = run_octavo(llms[enabled], w)
            rates[enabled].append(res.output_tokens_per_s)
            print(
                f"round {r} {'native gemm' if enabled else 'torch     '}: {res.elapsed_s:6.2f} s "
                f"{res.output_tokens_per_s:6.1f} output tok/s",
                flush=True,
            )
    old, new = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"median output tok/s: torch {old:.1f}, native gemm {new:.1f} ({new / old:.2f}x)")


if __name__ == "__main__":
    main()
