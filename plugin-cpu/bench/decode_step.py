"""Single-stream decode time per token, native dense kernels vs the core's torch defaults.

    python plugin-cpu/bench/decode_step.py [--rounds 3] [--output-len 64] [--profile cprofile|torch]
        [--modes native,native-ops,torch,torch-linear]

One engine (SmolLM2-135M, the platform's default dtype), one request of --input-len random
prompt tokens at a time; each decode step is timed. The modes swap the CPU linear method's
`apply` and CpuOps' rotary and silu_and_mul for core's torch defaults (and turn the one-call
decode step, `decode_forward.run_decode`, off) on the live platform between rounds, so all
run in one process, alternating, on the same weights: the ratio holds on a noisy machine.
Medians. With a torch-linear mode the linears keep their [out, in] weights beside the packed
copies (CpuLinearMethod lets go of them once packed; torch's linear reads them).

--profile runs one more native round under cProfile (top functions by own time, per token)
or torch.profiler (ops by self CPU time, per token).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import time
import types

from octavo import LLM, SamplingParams
from octavo.platform import FusedOps, LinearMethod
from octavo_cpu import decode_forward
from octavo_cpu.linear import CpuLinearMethod

MODES = {  # which dense ops fall back to the core defaults
    "native": (),
    "torch": ("linear", "rotary", "silu_and_mul"),
    "torch-linear": ("linear",),
    "native-ops": (),  # native kernels called op by op from Python (no one-call decode step)
}
RUN_DECODE = decode_forward.run_decode


def keep_unpacked_weights() -> None:
    """Keep each linear's [out, in] weight beside its packed copy, for torch's linear."""
    process = CpuLinearMethod.process_weights_after_loading

    def keeping(self, layer):
        weight = layer.weight
        process(self, layer)
        layer.weight = weight

    CpuLinearMethod.process_weights_after_loading = keeping


def set_mode(platform, mode: str) -> None:
    # the one-call decode step only in "native": the other modes time the model's op-by-op path
    decode_forward.run_decode = RUN_DECODE if mode == "native" else lambda *args: None
    for part, base, op in (
        (platform.linear, LinearMethod, "apply"),
        (platform.ops, FusedOps, "rotary"),
        (platform.ops, FusedOps, "silu_and_mul"),
    ):
        if ("linear" if op == "apply" else op) in MODES[mode]:
            setattr(part, op, types.MethodType(getattr(base, op), part))
        elif op in vars(part):
            delattr(part, op)  # back to the CPU part's method


def decode_steps(engine, prompt: list[int], output_len: int, rid: str) -> list[float]:
    """Seconds of each decode step (the prefill step is left out)."""
    engine.add_request(
        rid, {"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=output_len)
    )
    times = []
    first = True
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        if not first:
            times.append(time.perf_counter() - t)
        first = False
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="native,torch")
    ap.add_argument("--profile", choices=["cprofile", "torch"], default=None)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if any("linear" in MODES[m] for m in modes):
        keep_unpacked_weights()
    llm = LLM(model="smollm2", device="cpu")
    engine = llm.llm_engine
    platform = engine.platform
    rng = random.Random(0)
    prompt = [rng.randrange(100, 40000) for _ in range(args.input_len)]
    per_mode: dict[str, list[float]] = {m: [] for m in modes}
    n = 0
    for m in modes:  # warm-up
        set_mode(platform, m)
        decode_steps(engine, prompt, 8, f"warm-{m}")
    for r in range(args.rounds):
        for m in modes:
            set_mode(platform, m)
            steps = decode_steps(engine, prompt, args.output_len, f"{m}-{r}-{n}")
            n += 1
            per_mode[m].append(statistics.median(steps))
            print(f"round {r} {m:>13}: median {1e3 * per_mode[m][-1]:.2f} ms/token")
    print("median over rounds (ms/token):", {m: round(1e3 * statistics.median(v), 2) for m, v in per_mode.items()})
    if args.profile:
        set_mode(platform, "native")
        tokens = args.output_len
        if args.profile == "cprofile":
            pr = cProfile.Profile()
            pr.enable()
            decode_steps(engine, prompt, tokens + 1, "profile")
            pr.disable()
            s = io.StringIO()
            # SORT=cumulative NSTATS=50 for the call tree's shares
            pstats.Stats(pr, stream=s).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
                int(os.environ.get("NSTATS", "25"))
            )
            print(f"cProfile over {tokens} decode steps (+1 prefill); divide times by {tokens} for per token")
            print(s.getvalue())
        else:
            import torch.profiler as tp

            with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
                decode_steps(engine, prompt, tokens + 1, "profile")
            print(f"torch.profiler over {tokens} decode steps (+1 prefill)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
