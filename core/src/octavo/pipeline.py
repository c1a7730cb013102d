"""Pipeline parallelism: which ranks and layers a process holds, and the activations between stages.

A run of tensor_parallel_size x pipeline_parallel_size processes cuts the decoder's layers into
`pp` stages of consecutive layers (as evenly as the count allows, earlier stages one longer),
each run by a tensor-parallel group of `tp` ranks. The first stage holds the embedding, the last
the final norm and the lm_head; each stage allocates KV cache for its own layers only, in the
same number of blocks (one block table, the engine's, serves every stage).

The engine's process (global rank 0) samples, so it holds the LAST stage: the final hidden
states never travel back, and the first stage, on a worker, embeds the input ids every worker
receives with the step. Global rank r is tensor-parallel rank r % tp of stage
pp - 1 - r // tp: ranks 0..tp-1 are the last stage, the highest ranks the first.

Between stages travels the residual stream, `(x, residual)` of every token of the step (two
[tokens, hidden] tensors in the model's dtype, stacked into one message): from each rank of a
stage to the rank of the same tensor-parallel index in the next (tensor parallelism keeps the
whole residual stream on every rank of a stage). Stages run a step one after the other, so the
engine keeps up to `pp` steps (micro-batches of different requests) in flight
(LLMEngine._step_pipelined) to keep every stage busy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PipelineStage:
    """This process's place in the pipeline; the default is a whole model in one stage."""

    rank: int = 0  # 0: the first stage (embedding)
    size: int = 1
    prev_rank: int | None = None  # global rank that sends this one its activations (None: first stage)
    next_rank: int | None = None  # global rank this one sends its activations to (None: last stage)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def layer_range(self, num_layers: int) -> range:
        """The decoder layers (global indices) this stage runs."""
        base, extra = divmod(num_layers, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))


def stage_of(global_rank: int, tp_size: int, pp_size: int) -> PipelineStage:
    """The stage of a global rank, with its neighbours of the same tensor-parallel index."""
    block, tp_rank = divmod(global_rank, tp_size)
    rank = pp_size - 1 - block
    prev_rank = (block + 1) * tp_size + tp_rank if rank > 0 else None
    next_rank = (block - 1) * tp_size + tp_rank if rank < pp_size - 1 else None
    return PipelineStage(rank, pp_size, prev_rank, next_rank)


def join_run(platform, tp_size: int, pp_size: int, global_rank: int, init_method: str) -> None:
    """Make this process `global_rank` of a tp x pp run: join the whole run's process group
    (the device index and the host's cores are the run's), then, with pipeline stages, narrow
    the communicator to this stage's tensor-parallel group (what the models shard by and
    all-reduce over) and tell it its stage. Every rank creates every stage's group, in the
    same order, as torch.distributed requires."""
    platform.join_group(tp_size * pp_size, global_rank, init_method)
    if pp_size == 1:
        return
    import torch.distributed as dist

    groups = [dist.new_group(list(range(b * tp_size, (b + 1) * tp_size))) for b in range(pp_size)]
    comm = platform.communicator
    comm.group = groups[global_rank // tp_size]
    comm.world_size, comm.rank = tp_size, global_rank % tp_size
    comm.stage = stage_of(global_rank, tp_size, pp_size)


def send_activations(comm, x: torch.Tensor, residual: torch.Tensor) -> None:
    """Hand a stage's residual stream to the next stage."""
    assert comm.stage.next_rank is not None, "the last stage sends nothing"
    comm.send(torch.stack([x, residual]), comm.stage.next_rank)


def recv_activations(comm, num_tokens: int, hidden: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    """The previous stage's residual stream for a step of `num_tokens` tokens: (x, residual)."""
    assert comm.stage.prev_rank is not None, "the first stage receives nothing"
    both = comm.recv(torch.empty(2, num_tokens, hidden, dtype=dtype, device=device), comm.stage.prev_rank)
    return both[0], both[1]


def zero_activations(num_tokens: int, hidden: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    """Stand-in input of a stage's forwards that only measure or warm up (profiling, warm-up
    shapes): they run on each rank alone, without the previous stage."""
    both = torch.zeros(2, num_tokens, hidden, dtype=dtype, device=device)
    return both[0], both[1]
