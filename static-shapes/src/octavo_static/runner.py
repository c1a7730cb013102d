"""Core's runner with its step compiled once per static shape, and a count of what compiles late.

`torch.compile(fullgraph=True, dynamic=False)` is the stand-in for a graph compiler (XLA,
Neuron's): it refuses a graph break (a host sync, a shape read from data) and compiles one
program per input shape. Core's warm-up runs every bucket of the platform's `StaticShapes`
(`ModelRunner._compile_static_shapes`), so every program compiles then; a compilation after
warm-up is a step shape the buckets missed, and `stats().num_recompiles` reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from octavo.model_runner import ModelRunner
from octavo.platform import RunnerStats

_NO_LIMIT = 1 << 30


class CompileCounter:
    """A torch.compile back end that counts each program, then hands the captured graph to
    the named back end (`backend`, e.g. "neuron", "aot_eager"), or with None runs it as it is
    (no code generation: the point is the contract, not speed).

    It holds no reference to a runner: torch keeps compiled programs (and their back end) for
    the life of the process, and must not keep a finished engine's model and cache with them."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend
        self.count = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.count += 1
        if self.backend is None:
            return graph.forward
        # here, not at the top: discovery imports this module, and needs no compiler
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(graph, example_inputs)


class CompilingRunner(ModelRunner):
    """A `ModelRunner` whose subclass compiles its step with `_compile` and calls it through
    `_run`; compilations after `initialize_kv_cache` (which compiles every bucket) are
    `stats().num_recompiles`. `_compiler` names the torch.compile back end (None: the captured
    graph runs as it is)."""

    _compiler: str | None = None

    def __init__(self, config, platform, source) -> None:
        super().__init__(config, platform, source)
        self._compiles = CompileCounter(self._compiler)
        self._compiles_at_start: int | None = None

    def _compile(self, fn: Callable) -> Callable:
        return torch.compile(fn, fullgraph=True, dynamic=False, backend=self._compiles)

    def _run(self, compiled: Callable, *args: Any) -> Any:
        # every program of every engine in the process hangs off one code object; torch's
        # default limit (8 programs) would refuse the ninth shape. The counter, not that
        # limit, is what reports a shape compiled mid-serving.
        with torch._dynamo.config.patch(recompile_limit=_NO_LIMIT, accumulated_recompile_limit=_NO_LIMIT):
            return compiled(*args)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        super().initialize_kv_cache(num_blocks)  # compiles every bucket (core's _compile_static_shapes)
        self._compiles_at_start = self._compiles.count

    def stats(self) -> RunnerStats:
        if self._compiles_at_start is None:
            return RunnerStats()
        return RunnerStats(num_recompiles=self._compiles.count - self._compiles_at_start)
