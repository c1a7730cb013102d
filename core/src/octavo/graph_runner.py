"""Replayable device graphs for decode steps (CUDA / HIP / XPU graphs), vendor-neutral.

A decode step of a small model, or of a large one at small batch, costs more in host
launches than in device work: one step is a few hundred kernel launches. A platform's runner
(`ModelRunner.make_graph_runner`) builds a GraphRunner with its own `capture` function; the
forward (embedding .. final norm) is captured once per batch size in `sizes` into a
replayable graph, and a pure-decode step is then padded to the next captured size, copied
into the static input buffers and replayed.

What a captured graph freezes, and how the runner keeps it valid:

* device tensors: the graph reads fixed addresses, so every input lives in a static
  buffer (`input_ids`, `positions`, `slot_mapping`, `seq_lens`, `query_start_loc`,
  `block_tables` padded to the blocks of `max_model_len`) and each step copies its
  values in before the replay;
* host-side metadata: kernels size their launches from Python numbers, which the
  graph freezes. Captured batches have `max_query_len = 1` and `max_seq_len =
  max_model_len` (an upper bound, so e.g. a split-K decode kernel's split count is fixed
  for the graph); the host lists are updated in place on each replay for platforms whose
  "graph" re-runs Python;
* padding rows (batch < captured size): slot -1 (`write_kv` stores nothing),
  seq_len 1, and a block-table row of valid block ids (stale rows of earlier steps or
  zeros), so attention reads one key of an allocated block and the row's output,
  which nobody reads, stays finite. Rows are independent in every op, so padding never
  changes a real row.

Only steps whose requests all have q_len 1 replay; mixed and prefill steps run eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from octavo.platform import ForwardBatch

logger = logging.getLogger("octavo")

#: largest batch captured, whatever max_num_seqs is (bigger batches are compute bound)
MAX_CAPTURE_SIZE = 256


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, then every 16 up to max_num_seqs (capped at 256), which is
    always included."""
    top = max(1, min(max_num_seqs, MAX_CAPTURE_SIZE))
    sizes = [1, 2, 4, 8, 16, 24, 32] + list(range(48, MAX_CAPTURE_SIZE + 1, 16))
    sizes = [s for s in sizes if s < top] + [top]
    return sizes


class GraphRunner:
    """Captured decode graphs of one forward over one set of KV caches.

    `forward(batch)` computes hidden states (the runner's eager forward); `capture(fn)`
    is the platform's: it captures the device work of `fn()` and returns (output, replay),
    `output` being what `fn` returned during capture (tensors at fixed addresses that each
    `replay()` rewrites). Graphs should share one memory pool, captured largest first.
    """

    def __init__(
        self,
        forward: Callable[[ForwardBatch], torch.Tensor],
        capture: Callable[[Callable[[], Any]], tuple[Any, Callable[[], None]]],
        sizes: list[int],
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.capture_fn = capture
        self.max_model_len = max_model_len
        self.sizes = sorted(sizes)
        n = self.sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        with torch.device(device):
            self.input_ids = torch.zeros(n, dtype=torch.long)
            self.positions = torch.zeros(n, dtype=torch.long)
            self.slot_mapping = torch.full((n,), -1, dtype=torch.int64)
            self.seq_lens = torch.ones(n, dtype=torch.int32)
            self.query_start_loc = torch.arange(n + 1, dtype=torch.int32)
            self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32)
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor, ForwardBatch]] = {}
        self.capture_seconds = 0.0

    def _batch(self, b: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:b],
            positions=self.positions[:b],
            slot_mapping=self.slot_mapping[:b],
            query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(b + 1)),
            seq_lens_cpu=[1] * b,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs then reuse the pool's memory)."""
        t0 = time.perf_counter()
        for b in sorted(self.sizes, reverse=True):
            batch = self._batch(b)

            def fn(batch=batch) -> torch.Tensor:
                return self.forward(batch)

            fn()  # warm-up outside the graph: kernel compilation, library handles
            out, replay = self.capture_fn(fn)
            self.graphs[b] = (replay, out, batch)
        self.capture_seconds = time.perf_counter() - t0
        logger.info(
            "captured decode graphs for %d batch sizes (1..%d) in %.2f s",
            len(self.sizes),
            self.sizes[-1],
            self.capture_seconds,
        )

    def padded_size(self, num_seqs: int) -> int | None:
        for s in self.sizes:
            if s >= num_seqs:
                return s
        return None

    def _replay_size(self, batch: ForwardBatch) -> int | None:
        """The captured size a pure-decode batch replays at; None when it must run eagerly."""
        n = batch.num_reqs
        if n == 0 or batch.max_query_len != 1 or batch.query_start_loc_cpu[-1] != n:
            return None
        return self.padded_size(n)

    def run(self, batch: ForwardBatch) -> torch.Tensor | None:
        """Hidden states [>= n, hidden] (row i = request i) by replaying the graph of the
        next captured size, or None when this step must run eagerly."""
        b = self._replay_size(batch)
        if b is None:
            return None
        n = batch.num_reqs
        replay, out, gbatch = self.graphs[b]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(batch.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(batch.seq_lens, non_blocking=True)
        w = batch.block_tables.shape[1]
        self.block_tables[:n, :w].copy_(batch.block_tables, non_blocking=True)
        if b > n:
            self.slot_mapping[n:b].fill_(-1)
            self.seq_lens[n:b].fill_(1)
        # host copies, for platforms whose replay re-runs Python (a CUDA graph ignores them)
        gbatch.seq_lens_cpu[:n] = batch.seq_lens_cpu
        gbatch.seq_lens_cpu[n:] = [1] * (b - n)
        replay()
        return out
