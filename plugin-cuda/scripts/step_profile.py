"""Where a decode step's time goes: `python3 step_profile.py ENGINE_ARGS... [--batch N] [--steps N]`.

Runs N requests of 128 prompt tokens through LLMEngine and times, per decode step, the
host phases (schedule, input preparation, graph replay launch, logits + sampler, the
wait for the sampled tokens, output processing) next to the device time of the replay
alone (the captured graph run back to back). The gap between the step time and the
replay time is what host work costs the GPU.
"""

import argparse
import statistics
import sys
import time

from octavo import EngineArgs, SamplingParams
from octavo.engine import LLMEngine

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--profile", default="")
own, rest = ap.parse_known_args()
args = EngineArgs.from_cli_args(EngineArgs.add_cli_args(argparse.ArgumentParser()).parse_args(rest))
engine = LLMEngine(args)
runner = engine.runner
sync = engine.platform.device.synchronize

phases: dict[str, list[float]] = {}


def timed(obj, name, label):
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        phases.setdefault(label, []).append(time.perf_counter() - t)
        return r

    setattr(obj, name, wrapper)


timed(engine.scheduler, "schedule", "schedule")
timed(runner, "_prepare", "prepare")
if runner.graph_runner is not None:
    timed(runner.graph_runner, "run", "replay launch")
timed(runner.model, "compute_logits", "logits launch")
timed(type(runner.sampler), "launch", "sampler launch")
timed(runner, "launch", "step launch total")
timed(runner, "collect", "collect (waits for the step)")
timed(engine.scheduler, "update", "scheduler update")

for i in range(own.batch):
    engine.add_request(
        f"r{i}",
        {"prompt_token_ids": list(range(100 + i, 228 + i))},
        SamplingParams(max_tokens=own.steps + 100, ignore_eos=True, temperature=1.0, seed=i),
    )
while any(len(s.req.token_ids) < 2 for s in engine.sample_of.values()):
    engine.step()  # prefill
for _ in range(10):
    engine.step()
phases.clear()
sync()
t0 = time.perf_counter()
step_times = []
for _ in range(own.steps):
    t = time.perf_counter()
    engine.step()
    step_times.append(time.perf_counter() - t)
sync()
total = time.perf_counter() - t0
print(
    f"batch {own.batch}: {own.steps} decode steps, {total / own.steps * 1e3:.3f} ms/step "
    f"(median {statistics.median(step_times) * 1e3:.3f})"
)
for k, v in phases.items():
    print(f"  {k:24s} median {statistics.median(v) * 1e3:7.3f} ms  mean {statistics.mean(v) * 1e3:7.3f} ms  n={len(v)}")

gr = runner.graph_runner
if gr is not None:
    b = gr.padded_size(own.batch)
    replay = gr.graphs[b][0]
    sync()
    t = time.perf_counter()
    for _ in range(100):
        replay()
    sync()
    print(f"  graph replay alone (batch {b}): {(time.perf_counter() - t) / 100 * 1e3:.3f} ms")
    hidden = gr.graphs[b][1]
    t = time.perf_counter()
    for _ in range(100):
        runner.model.compute_logits(hidden[: own.batch])
    sync()
    print(f"  compute_logits alone: {(time.perf_counter() - t) / 100 * 1e3:.3f} ms")


def kernel_timeline(trace_path: str, steps: int) -> None:
    """From a chrome trace: kernels per step, the GPU's busy time, and the idle time between
    kernels (launch gaps and ramp-up), per step; then the kernels by total time."""
    import json

    with open(trace_path) as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    busy = sum(e["dur"] for e in events)
    span = events[-1]["ts"] + events[-1]["dur"] - events[0]["ts"]
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(events, events[1:])]
    small = [g for g in gaps if g < 50]  # between kernels of one step; larger ones are between steps
    print(
        f"  kernels: {len(events) / steps:.0f} a step, busy {busy / steps / 1e3:.3f} ms a step, "
        f"span {span / steps / 1e3:.3f} ms a step; gaps under 50 us: {sum(small) / steps / 1e3:.3f} ms a step "
        f"(median {statistics.median(small):.2f} us), larger gaps {sum(g for g in gaps if g >= 50) / steps / 1e3:.3f} ms"
    )
    by_name: dict[str, list[float]] = {}
    for e in events:
        by_name.setdefault(e["name"][:90], []).append(e["dur"])
    for name, d in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:16]:
        print(
            f"    {sum(d) / steps:8.1f} us/step  n/step {len(d) / steps:5.1f}  median {statistics.median(d):7.2f} us  {name}"
        )


if own.profile:
    from torch.profiler import ProfilerActivity, profile

    profiled_steps = 20  # fewer than the 100 spare tokens
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(profiled_steps):
            engine.step()
        sync()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    prof.export_chrome_trace(own.profile)
    kernel_timeline(own.profile, profiled_steps)
sys.stdout.flush()
