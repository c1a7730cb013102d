"""Replayable device graphs for decode steps (CUDA graphs on NVIDIA), vendor-neutral.

A decode step of a small model, or of a large one at small batch, costs more in host
launches than in device work: one step is a few hundred kernel launches. The runner
captures the model forward (embedding .. final norm) once per batch size in
`capture_sizes()` into a replayable graph through the platform's optional
`capture_graph`, and a pure-decode step is then padded to the next captured size,
copied into the static input buffers and replayed.

What a captured graph freezes, and how the runner keeps it valid:

* device tensors: the graph reads fixed addresses, so every input lives in a static
  buffer (`input_ids`, `positions`, `slot_mapping`, `seq_lens`, `query_start_loc`,
  `block_tables` padded to the blocks of `max_model_len`) and each step copies its
  values in before the replay;
* host-side metadata: kernels size their launches from Python numbers, which the
  graph freezes. Captured batches are `num_decodes = batch`, `max_query_len = 1` and
  `max_seq_len = max_model_len` (an upper bound, so e.g. a split-K decode kernel's
  split count is fixed for the graph); the host lists are updated in place on each
  replay for platforms whose "graph" re-runs Python;
* padding rows (batch < captured size): slot -1 (`write_kv` stores nothing),
  seq_len 1, and a block-table row of valid block ids (stale rows of earlier steps or
  zeros), so attention reads one key of an allocated block and the row's output,
  which nobody reads, stays finite. Rows are independent in every op, so padding never
  changes a real row.

Only steps whose requests all have q_len 1 replay; mixed and prefill steps run eagerly,
as does everything with `enforce_eager=True` or on a platform without graph support.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from octavo.platform import AttentionMetadata

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
    """Captured decode graphs of one model over one set of KV caches."""

    def __init__(
        self,
        model: torch.nn.Module,
        platform: Any,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.platform = platform
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_num_seqs)
        n = self.sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        with torch.device(device):
            self.input_ids = torch.zeros(n, dtype=torch.long)
            self.positions = torch.zeros(n, dtype=torch.long)
            self.slot_mapping = torch.full((n,), -1, dtype=torch.int64)
            self.seq_lens = torch.ones(n, dtype=torch.int32)
            self.query_start_loc = torch.arange(n + 1, dtype=torch.int32)
            self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32)
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor, AttentionMetadata]] = {}
        self.capture_seconds = 0.0

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            slot_mapping=self.slot_mapping[:b],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(b + 1)),
            seq_lens_cpu=[1] * b,
            num_decodes=b,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs then reuse the pool's memory)."""
        t0 = time.perf_counter()
        for b in sorted(self.sizes, reverse=True):
            meta = self._meta(b)
            ids, pos = self.input_ids[:b], self.positions[:b]

            def forward(ids=ids, pos=pos, meta=meta) -> torch.Tensor:
                return self.model(ids, pos, self.kv_caches, meta)

            forward()  # warm-up outside the graph: kernel compilation, library handles
            out, replay = self.platform.capture_graph(forward)
            self.graphs[b] = (replay, out, meta)
        self.platform.synchronize()
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

    def can_run(self, meta: AttentionMetadata) -> bool:
        n = meta.num_seqs
        return n > 0 and meta.num_decodes == n and meta.max_query_len == 1 and self.padded_size(n) is not None

    def run(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states [>= n, hidden] (row i = request i) by replaying the graph of the
        next captured size, or None when this step must run eagerly."""
        if not self.can_run(meta):
            return None
        n = meta.num_seqs
        b = self.padded_size(n)
        replay, out, gmeta = self.graphs[b]
        self.input_ids[:n].copy_(ids, non_blocking=True)
        self.positions[:n].copy_(pos, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        w = meta.block_tables.shape[1]
        self.block_tables[:n, :w].copy_(meta.block_tables, non_blocking=True)
        if b > n:
            self.slot_mapping[n:b].fill_(-1)
            self.seq_lens[n:b].fill_(1)
        # host copies, for platforms whose replay re-runs Python (a CUDA graph ignores them)
        gmeta.seq_lens_cpu[:n] = meta.seq_lens_cpu
        gmeta.seq_lens_cpu[n:] = [1] * (b - n)
        replay()
        return out
