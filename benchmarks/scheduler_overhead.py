"""CPU time of the scheduler and block manager over a C1-shaped run, prefix caching off and on.

The pure-Python scheduling layer is driven with fake sampled tokens (no model), so the figure is
the bookkeeping cost alone: compare it with the run's wall time to get caching's overhead.

    python benchmarks/scheduler_overhead.py [--requests 64 --prompt 256 --output 128]
"""

import argparse
import random
import time

from octavo.block_manager import BlockManager
from octavo.request import Request
from octavo.sampling_params import SamplingParams
from octavo.scheduler import Scheduler


def run(caching: bool, n: int, prompt: int, output: int) -> tuple[float, int]:
    bm = BlockManager(num_blocks=11650, block_size=16, enable_prefix_caching=caching)
    s = Scheduler(bm, max_num_seqs=256, max_num_batched_tokens=2048, max_model_len=8192)
    rng = random.Random(0)
    for i in range(n):
        s.add_request(
            Request(
                str(i),
                [rng.randrange(100, 40000) for _ in range(prompt)],
                SamplingParams(max_tokens=output, ignore_eos=True),
            )
        )
    t = time.process_time()
    steps = 0
    while s.has_unfinished():
        out = s.schedule()
        s.update(out, {x.request_id: rng.randrange(100, 40000) for x in out.scheduled if x.sample})
        steps += 1
    return time.process_time() - t, steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--output", type=int, default=128)
    a = ap.parse_args()
    for caching in (False, True):
        cpu, steps = min(run(caching, a.requests, a.prompt, a.output) for _ in range(3))
        print(f"prefix caching {'on ' if caching else 'off'}: {cpu * 1000:.1f} ms CPU over {steps} steps")


if __name__ == "__main__":
    main()
