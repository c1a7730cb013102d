"""The communicator: collectives between the ranks of a multi-process run.

Core's models call `all_reduce` (row-parallel layers); the other collectives are the contract
that pipeline, expert and vocabulary parallelism build on. The default runs them through
torch.distributed with the device's backend (gloo, nccl, ...); with one rank every collective
returns its input.

With pipeline parallelism (octavo.pipeline) the run has more processes than one tensor-parallel
group: `join` joins them all, then core narrows the communicator to this rank's stage (since
2.3): `world_size`, `rank` and `group` become the stage's tensor-parallel group, which the
collectives run over, and `stage` says which layers the rank holds and whom it sends its
activations to; `send` and `recv` address global ranks of the whole run.
"""

from __future__ import annotations

import datetime

import torch

from octavo.pipeline import PipelineStage
from octavo.platform.device import Device


class Communicator:
    """Collectives over this process's group. Subclass to use vendor collectives, or to set
    up the process (pick the device, split host cores) in `join`, calling super()."""

    #: how long a collective waits for a peer before raising (a hung rank must not hang all)
    timeout_s: float = 600.0

    def __init__(self, device: Device) -> None:
        self.device = device
        self.world_size = 1
        self.rank = 0
        #: the process group of the collectives (None: the whole run's, torch's default group)
        self.group = None
        #: this rank's pipeline stage (the default: the whole model)
        self.stage = PipelineStage()

    def join(self, world_size: int, rank: int, init_method: str) -> None:
        """Join the process group of a run with `world_size` ranks (one process per rank,
        all on this host: rank = local_rank = device index). Called before the model is
        built; the device's `local_rank` is set to `rank` first."""
        self.world_size, self.rank = world_size, rank
        if world_size == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                self.device.dist_backend,
                init_method=init_method,
                world_size=world_size,
                rank=rank,
                timeout=datetime.timedelta(seconds=self.timeout_s),
            )

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place where the backend allows; returns the result."""
        if self.world_size > 1:
            torch.distributed.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's x, concatenated in rank order along `dim`."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x split into world_size equal chunks along dim 0; chunk j goes to rank j, and the
        result holds the chunks received, in rank order."""
        if self.world_size == 1:
            return x
        out = torch.empty_like(x)
        torch.distributed.all_to_all_single(out, x.contiguous(), group=self.group)
        return out

    def send(self, x: torch.Tensor, dst: int) -> None:
        """Send x to global rank `dst` (blocks until it is handed over)."""
        torch.distributed.send(x.contiguous(), dst=dst)

    def recv(self, x: torch.Tensor, src: int) -> torch.Tensor:
        """Receive into x from global rank `src` (its shape and dtype say what arrives); returns x."""
        torch.distributed.recv(x, src=src)
        return x
