"""A static-shape platform on the CPU: what a compiled-graph accelerator (XLA, Neuron) asks
of core, exercised with torch.compile as the stand-in compiler.

`StaticReferencePlatform` ("static-reference") declares `StaticShapes`, so core pads every
step to a bucket and runs every bucket once at start-up; its runner runs the model through
`torch.compile(fullgraph=True, dynamic=False)`, which refuses a graph break (a host sync, a
shape read from data) and compiles one program per input shape, as XLA does. It counts the
compilations: any after warm-up is a step shape the buckets missed (`stats().num_recompiles`).
The attention and the compiling runner are octavo-static's (`octavo_static`), which
octavo-neuron serves with too; this module declares the platform around them.

The compiler back end only captures the graph and runs it eagerly (no code generation): the
point is the contract (static shapes, no host syncs, nothing compiled mid-serving), not speed.
It does not prove that a graph lowers to a real device's compiler, nor anything about its
memory or speed.
"""

from __future__ import annotations

import torch

from octavo.platform import (
    AttentionBackend,
    Availability,
    ForwardBatch,
    Platform,
    SchedulingPolicy,
    StaticShapes,
    hookimpl,
)
from octavo_static.attention import StaticAttention
from octavo_static.runner import CompilingRunner

#: every step shape the platform compiles: prompts of up to 256 tokens in one step, up to 4
#: requests, contexts of up to 4 or 16 blocks of 16 (the widest holds the longest context
#: that the token budget admits); 3 x 2 x 2 = 12 programs, each traced in about half a second
#: for the tiny test models
SHAPES = StaticShapes(token_buckets=(16, 64, 256), request_buckets=(1, 4), block_buckets=(4, 16))
BLOCK_SIZE = 16


def _run_model(
    model: torch.nn.Module, attention: AttentionBackend, batch: ForwardBatch, kv_caches: list
) -> torch.Tensor:
    """One step's hidden states: the region compiled per step shape."""
    return model(batch.input_ids, batch.positions, kv_caches, attention.build_metadata(batch))


class StaticRunner(CompilingRunner):
    """Core's runner with the forward compiled per step shape, as a graph compiler would."""

    def __init__(self, config, platform, source) -> None:
        super().__init__(config, platform, source)
        self._step = self._compile(_run_model)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        return self._run(self._step, self.model, self.platform.attention, batch, self.kv_caches)


class StaticReferencePlatform(Platform):
    """The CPU as a static-shape device (see the module doc). For tests and for plugin
    authors to read; it scores 1, so device="auto" takes any other usable platform first."""

    name = "static-reference"
    api_version = "2.0"
    package = "octavo-plugin-kit"
    attention_cls = StaticAttention
    runner_cls = StaticRunner
    scheduling = SchedulingPolicy(
        default_max_num_batched_tokens=SHAPES.token_buckets[-1],
        chunked_prefill=False,
        mixed_steps=False,
        block_size=BLOCK_SIZE,
        static_shapes=SHAPES,
    )

    @classmethod
    def availability(cls) -> Availability:
        return Availability(score=1, reason="the CPU through torch.compile with static shapes, for tests")


@hookimpl
def octavo_platforms() -> list[type[Platform]]:
    return [StaticReferencePlatform]
