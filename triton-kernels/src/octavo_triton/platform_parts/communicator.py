"""Collectives through torch.distributed on the device's backend (NCCL, RCCL under the same
name on ROCm, XCCL on Intel), each rank bound to its own GPU first."""

from __future__ import annotations

import os

import torch

from octavo.platform import Communicator


class GpuCommunicator(Communicator):
    def join(self, world_size: int, rank: int, init_method: str) -> None:
        # NCCL, RCCL and XCCL bind a communicator to the current device: pick ours before init
        if world_size > 1:
            module = torch.get_device_module(self.device.type)
            local_rank = int(os.environ.get("LOCAL_RANK", rank % max(1, module.device_count())))
            module.set_device(local_rank)
            self.device.local_rank = local_rank  # the device the runner allocates on
        super().join(world_size, rank, init_method)
