"""The seam at the step: the object that turns a SchedulerOutput into a StepOutput.

Core's eager runner (`octavo.model_runner.ModelRunner`) is the default: it builds core's model
over the platform's parts and runs it op by op (CPUs and CUDA-like GPUs keep it, or subclass
it). A platform whose device wants the whole step (forward, logits and sampling compiled
together, its own view of the KV cache, tensor parallelism as SPMD in one process) supplies its
own `StepRunner` instead (`Platform.runner_cls`). The engine talks to a runner only through the
methods below, in this order:

    runner = platform.make_runner(config, source)       # loads the weights
    per_block = runner.kv_cache_bytes_per_block()        # every layer's cache, one block
    budget = runner.kv_cache_budget_bytes()              # may run a profiling forward
    runner.initialize_kv_cache(num_blocks)               # allocate, warm up, compile
    loop: step = runner.launch(scheduler_output, pending); out = runner.collect(step)
          (a step with structured-output requests: runner.launch_with_grammar(..., grammar_bitmask))
    runner.forget(request_id) when a request ends; runner.shutdown() at the end
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: one sampled position's logprobs: (logprob of the chosen token, its rank, [(token id, logprob)] top-k)
TokenLogprobs = tuple[float, int, list[tuple[int, float]]]


@dataclass(frozen=True)
class StepOutput:
    """Runner -> scheduler: one sampled token per request that reached its end this step."""

    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    # per request: (first prompt position predicted, one entry per position)
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)
    # requests whose own work raised this step (request id -> error): they fail, the rest go on
    failed: dict[str, str] = field(default_factory=dict)
    # speculative decoding (since 2.3), per request scheduled with proposed tokens
    # (`ScheduledRequest.spec_token_ids`): how many of them stand, before its `sampled` token
    num_accepted: dict[str, int] = field(default_factory=dict)
    # and the logprobs of those accepted tokens (requests that asked for logprobs)
    accepted_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerStats:
    """What a runner reports beside the engine's own counters."""

    #: compilations after warm-up (a static-shape runner compiles every shape at warm-up;
    #: anything above 0 is a shape it missed)
    num_recompiles: int = 0


class StepRunner(ABC):
    """Required: everything marked abstract. `execute`, `forget`, `stats` and `shutdown` have
    defaults. `launch` may return before the device has finished (async scheduling feeds a
    launched step's tokens to the next one); `collect` waits for it."""

    def __init__(self, config: Any, platform: Any, source: Any) -> None:
        """Build the model on the platform's parts and load its weights (config: EngineConfig,
        platform: the Platform instance, source: octavo.loader.source.ModelSource)."""
        self.config = config
        self.platform = platform
        self.source = source

    @abstractmethod
    def kv_cache_bytes_per_block(self) -> int:
        """Bytes one block costs across every layer's cache (from the attention back end's
        `kv_cache_spec`): the engine sizes the cache in blocks from this and the budget."""

    @abstractmethod
    def kv_cache_budget_bytes(self) -> int:
        """Bytes this process's KV cache may take (the device's `kv_cache_budget_bytes`)."""

    @abstractmethod
    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate every layer's cache of `num_blocks` blocks, then warm up: whatever compiles
        on first use (kernels, graphs, every static shape) compiles here, not in a request."""

    @abstractmethod
    def launch(self, scheduler_output: Any, min_tokens_pending: dict[str, bool]) -> Any:
        """Queue one step (forward, logits, sampling); return a handle for `collect`.
        `min_tokens_pending[request_id]`: the request is still under its min_tokens (its EOS
        and stop tokens must not be sampled)."""

    def launch_with_grammar(
        self,
        scheduler_output: Any,
        min_tokens_pending: dict[str, bool],
        grammar_bitmask: Callable[[list[str]], Any],
    ) -> Any:
        """`launch` for a step with structured-output requests (since 2.2). Queue the forward
        and the logits first, then call `grammar_bitmask(request_ids)` with the ids of the rows
        to sample, in order: the engine fills the grammars' masks on the host meanwhile (with
        async scheduling it first waits for the step before, whose tokens the grammars need),
        so the device is not kept waiting. It returns an int32 host tensor [rows, ceil(V / 32)]
        (`FusedOps.apply_token_bitmask`'s layout; rows without a grammar allow every token), or
        None when no row is constrained; apply it to the logits before sampling. Optional: the
        engine refuses structured-output requests on a runner that does not implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not apply grammar bitmasks, so it cannot serve structured outputs"
        )

    @abstractmethod
    def collect(self, launched: Any, before_sync: Callable[[], None] | None = None) -> StepOutput:
        """Wait for a launched step's tokens. `before_sync` (host work of the engine's) runs
        first, while the device still computes."""

    def execute(
        self,
        scheduler_output: Any,
        min_tokens_pending: dict[str, bool],
        before_sync: Callable[[], None] | None = None,
    ) -> StepOutput:
        """One step, launched and collected."""
        return self.collect(self.launch(scheduler_output, min_tokens_pending), before_sync)

    def forget(self, request_id: str) -> None:  # noqa: B027 - optional: a no-op by default
        """The request ended: drop whatever the runner keeps for it (seeded generators...)."""

    def stats(self) -> RunnerStats:
        return RunnerStats()

    def shutdown(self) -> None:  # noqa: B027 - optional: a no-op by default
        """Release what the runner holds (workers, compiled programs). Idempotent."""
