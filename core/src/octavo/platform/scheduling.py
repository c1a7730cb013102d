"""What a platform asks of the scheduler and the step's shapes (plain data, no torch).

Eager devices (CPUs, GPUs) take steps of any shape and want the defaults. A compiled-graph
device (XLA, Neuron) compiles one program per input shape, so it declares `StaticShapes`:
every step is padded to a bucket, all buckets are compiled at warm-up, and a shape outside
them never reaches the device.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


def bucket_for(buckets: tuple[int, ...], n: int) -> int:
    """The smallest bucket >= n (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} is past the largest bucket {buckets[-1]}")
    return buckets[i]


@dataclass(frozen=True)
class StaticShapes:
    """The shapes a static-shape platform compiles. A step of T tokens, B requests and block
    tables W blocks wide runs padded to the smallest token, request and block buckets that
    hold it: padding tokens have slot -1 (they store no KV), padding requests q_len 0."""

    token_buckets: tuple[int, ...]
    request_buckets: tuple[int, ...]
    block_buckets: tuple[int, ...]  # widths of the block tables (blocks per request)

    def __post_init__(self) -> None:
        for name in ("token_buckets", "request_buckets", "block_buckets"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"StaticShapes.{name} must be distinct positive sizes in ascending order: {values}")

    def pad(self, num_tokens: int, num_reqs: int, width: int) -> tuple[int, int, int]:
        return (
            bucket_for(self.token_buckets, num_tokens),
            bucket_for(self.request_buckets, num_reqs),
            bucket_for(self.block_buckets, width),
        )

    def shapes(self, largest: tuple[int, int, int] | None = None) -> list[tuple[int, int, int]]:
        """Every (tokens, requests, block width) a step can have: what warm-up compiles.
        `largest`: the most tokens, requests and block-table width the engine will ever put in
        a step; buckets past those that hold them never occur. A request bucket whose smallest
        count exceeds the token bucket cannot occur either (each request has a token)."""
        top = (
            self.pad(*largest)
            if largest
            else (self.token_buckets[-1], self.request_buckets[-1], self.block_buckets[-1])
        )
        fewest_reqs = dict(zip(self.request_buckets, (1, *(r + 1 for r in self.request_buckets))))
        return [
            (t, r, w)
            for t in self.token_buckets
            if t <= top[0]
            for r in self.request_buckets
            if r <= top[1] and fewest_reqs[r] <= t
            for w in self.block_buckets
            if w <= top[2]
        ]


def powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
    """lo, 2 lo, 4 lo, ... up to and including hi (hi need not be a power of two)."""
    out = []
    n = lo
    while n < hi:
        out.append(n)
        n *= 2
    out.append(hi)
    return tuple(out)


@dataclass(frozen=True)
class SchedulingPolicy:
    """How the engine schedules steps for a platform (`Platform.scheduling`)."""

    #: tokens per step when the user sets no --max-num-batched-tokens: big enough that prefill
    #: GEMMs run at the device's full rate, small enough that decodes sharing a step with a
    #: prefill chunk are not held up long
    default_max_num_batched_tokens: int = 2048
    #: schedule and launch step N+1 while step N runs (--async-scheduling's default). It pays
    #: where launching returns before the device has finished; on a device that computes as
    #: it is called it only adds a wasted token per stop
    async_scheduling: bool = False
    #: split a prompt longer than the step's budget over several steps; False: a prompt runs
    #: in one step (and one longer than the budget is refused)
    chunked_prefill: bool = True
    #: prefills and decodes in the same step; False: a step is all prefill or all decode
    mixed_steps: bool = True
    #: the only block size the device takes (None: the user's --block-size)
    block_size: int | None = None
    #: pad every step to these shapes (None: steps of any shape). The token budget is then
    #: padding-aware: a step's tokens and requests never exceed the largest buckets, whatever
    #: the user's --max-num-batched-tokens / --max-num-seqs
    static_shapes: StaticShapes | None = None
