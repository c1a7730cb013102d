"""Collectives over gloo, with each tensor-parallel rank given its own slice of the cores."""

from __future__ import annotations

import os

import torch

from octavo.platform import Communicator


class CpuCommunicator(Communicator):
    def join(self, world_size: int, rank: int, init_method: str) -> None:
        super().join(world_size, rank, init_method)
        if world_size > 1:
            _split_cores(world_size, rank)


def _split_cores(world_size: int, rank: int) -> None:
    """Give each tensor-parallel rank its own slice of the usable cores.

    Without this every rank runs one thread per core: ranks then fight for the cores,
    and a rank waiting in an all_reduce keeps its idle threads spinning on cores a peer
    needs. Workers (rank > 0) are pinned to their slice; rank 0 is the caller's process
    (scheduler, server, other threads of the application), so it only gets its thread
    count, not a changed affinity that would outlive the engine. OMP_NUM_THREADS, when
    set, is the thread count of each rank.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (not Linux): thread counts only
        cores = list(range(os.cpu_count() or 1))
    share = max(1, len(cores) // world_size)
    mine = cores[rank * share : (rank + 1) * share] if len(cores) >= world_size else cores
    if rank > 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, mine)
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else len(mine))
