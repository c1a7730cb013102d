"""Collectives over NCCL (torch.distributed), each rank bound to its own GPU first."""

from __future__ import annotations

import os

import torch

from octavo.platform import Communicator


class CudaCommunicator(Communicator):
    def join(self, world_size: int, rank: int, init_method: str) -> None:
        # NCCL binds a communicator to the current device: pick ours before init
        if world_size > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
            torch.cuda.set_device(local_rank)
            self.device.local_rank = local_rank  # the device the runner allocates on
        super().join(world_size, rank, init_method)
