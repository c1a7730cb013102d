"""How much GPU memory the KV cache may take (a first estimate, before profiling).

    budget = total * gpu_memory_utilization - in_use - activation_reserve

* `in_use` = what the device reports as used (total - free: this process's CUDA
  context, weights and workspaces, and any other process on the GPU), minus the
  memory torch has cached but not handed out, which the KV tensors will reuse.
* `activation_reserve` = the peak of one forward pass that this estimate cannot yet
  measure: per scheduled token, about 6 hidden-size and 3 intermediate-size vectors
  alive at once (residual, norm output, qkv, attention output, gate/up, activation);
  float32 logits with two working copies for the sampler (max_num_seqs x vocab);
  and a fixed 1 GiB for cuBLAS/NCCL workspaces, CUDA graphs and fragmentation.

The engine will replace the reserve with a measured peak from a profiling forward.
"""

from __future__ import annotations

from typing import Any

import torch

FIXED_RESERVE_BYTES = 1 << 30


def activation_reserve_bytes(config: Any) -> int:
    hf = config.model.hf_config
    hidden = int(getattr(hf, "hidden_size", 0) or 0)
    inter = int(getattr(hf, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(hf, "vocab_size", 0) or 0)
    elem = config.model.dtype.itemsize
    tokens = config.scheduler.max_num_batched_tokens
    per_token = (6 * hidden + 3 * inter) * elem
    logits = 3 * config.scheduler.max_num_seqs * vocab * 4
    return tokens * per_token + logits + FIXED_RESERVE_BYTES


def kv_cache_budget_bytes(config: Any, device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    in_use = (total - free) - cached_unused
    budget = total * config.cache.gpu_memory_utilization - in_use - activation_reserve_bytes(config)
    return max(0, int(budget))
