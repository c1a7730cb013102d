"""How much GPU memory the KV cache may take.

    budget = total * gpu_memory_utilization - in_use - activation_reserve

* `in_use` = what the device reports as used (total - free: this process's CUDA
  context, weights and workspaces, and any other process on the GPU), minus the
  memory torch has cached but not handed out, which the KV tensors will reuse.
* `activation_reserve` = the peak of one forward pass at the largest token budget,
  measured: the runner's `profile_run` (max_num_batched_tokens prompt tokens through
  the model with a one-block cache, then logits and the sampler at max_num_seqs rows)
  runs between `torch.cuda.reset_peak_memory_stats()` and `max_memory_allocated()`;
  the reserve is that peak above what was allocated before, plus PROFILED_SLACK_BYTES
  for the CUDA-graph pool (decode activations at <= 256 tokens, split-K buffers),
  allocator fragmentation and what libraries allocate later.
  Without a profile (a caller that never ran one) the old estimate is used: per
  scheduled token about 6 hidden-size and 3 intermediate-size vectors alive at once,
  float32 logits with two working copies for the sampler, and a fixed 1 GiB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("octavo")

FIXED_RESERVE_BYTES = 1 << 30
PROFILED_SLACK_BYTES = 512 << 20


def activation_reserve_bytes(config: Any) -> int:
    """The estimate used when no profile ran."""
    hf = config.model.hf_config
    hidden = int(getattr(hf, "hidden_size", 0) or 0)
    inter = int(getattr(hf, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(hf, "vocab_size", 0) or 0)
    elem = config.model.dtype.itemsize
    tokens = config.scheduler.max_num_batched_tokens
    per_token = (6 * hidden + 3 * inter) * elem
    logits = 3 * config.scheduler.max_num_seqs * vocab * 4
    return tokens * per_token + logits + FIXED_RESERVE_BYTES


def profile_peak_bytes(forward: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes torch allocated while `forward()` ran, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    logger.info(
        "memory profile: one forward at the largest token budget peaks at %.2f GiB of activations", peak / 2**30
    )
    return max(0, int(peak))


def kv_cache_budget_bytes(config: Any, device: torch.device, activation_bytes: int | None = None) -> int:
    free, total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    in_use = (total - free) - cached_unused
    if activation_bytes is None:
        reserve = activation_reserve_bytes(config)
    else:
        reserve = activation_bytes + PROFILED_SLACK_BYTES
    budget = total * config.cache.gpu_memory_utilization - in_use - reserve
    logger.info(
        "KV budget: %.2f GiB = %.2f GiB x %.2f - %.2f GiB in use - %.2f GiB activations (%s)",
        max(0, budget) / 2**30,
        total / 2**30,
        config.cache.gpu_memory_utilization,
        in_use / 2**30,
        reserve / 2**30,
        "profiled + slack" if activation_bytes is not None else "estimated",
    )
    return max(0, int(budget))
