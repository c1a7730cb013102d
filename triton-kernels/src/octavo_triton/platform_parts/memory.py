"""How much GPU memory the KV cache may take (any torch GPU: `module` is torch.cuda, torch.xpu, ...).

    budget = total * gpu_memory_utilization - in_use - (activation_peak + PROFILED_SLACK_BYTES)

* `in_use` = what the device reports as used (total - free: this process's driver
  context, weights and workspaces, and any other process on the GPU), minus the
  memory torch has cached but not handed out, which the KV tensors will reuse.
* `activation_peak` = the peak of one forward pass at the largest token budget, measured:
  the runner's profiling forward (max_num_batched_tokens prompt tokens through the model
  with a one-block cache, then logits and the sampler at max_num_seqs rows) runs between
  the device module's `reset_peak_memory_stats()` and `max_memory_allocated()`; the peak is
  taken above what was allocated before. PROFILED_SLACK_BYTES is room for the graph pool
  (decode activations at <= 256 tokens, split-K buffers), allocator fragmentation and
  what libraries allocate later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("octavo")

PROFILED_SLACK_BYTES = 512 << 20


def profile_peak_bytes(forward: Callable[[], Any], module: Any, device: torch.device) -> int:
    """Peak bytes torch allocated while `forward()` ran, above what was allocated before."""
    module.synchronize(device)
    module.empty_cache()
    before = module.memory_allocated(device)
    module.reset_peak_memory_stats(device)
    forward()
    module.synchronize(device)
    peak = module.max_memory_allocated(device) - before
    module.empty_cache()
    logger.info(
        "memory profile: one forward at the largest token budget peaks at %.2f GiB of activations", peak / 2**30
    )
    return max(0, int(peak))


def kv_cache_budget_bytes(config: Any, module: Any, device: torch.device, activation_bytes: int) -> int:
    """The formula above, with the profiled activation peak (weights are already in `in_use`)."""
    free, total = module.mem_get_info(device)
    cached_unused = module.memory_reserved(device) - module.memory_allocated(device)
    in_use = (total - free) - cached_unused
    reserve = activation_bytes + PROFILED_SLACK_BYTES
    budget = total * config.cache.gpu_memory_utilization - in_use - reserve
    logger.info(
        "KV budget: %.2f GiB = %.2f GiB x %.2f - %.2f GiB in use - %.2f GiB activations (profiled + slack)",
        max(0, budget) / 2**30,
        total / 2**30,
        config.cache.gpu_memory_utilization,
        in_use / 2**30,
        reserve / 2**30,
    )
    return max(0, int(budget))
