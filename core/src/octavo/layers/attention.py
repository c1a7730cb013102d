"""Self-attention over the paged KV cache (q/k/v projection, rotary, platform attention).

With tensor parallelism (Megatron style) each rank holds a slice of the heads: qkv_proj is
column-parallel (its q heads and the kv heads they read), o_proj row-parallel, and the
partial o_proj outputs are summed by the communicator's all_reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octavo.layers.linear import Linear
from octavo.layers.norm import Float32RMSNorm, RMSNorm
from octavo.platform import AttentionSpec, FusedOps, Platform


@dataclass(frozen=True)
class HeadShard:
    """One rank's heads: q heads [q_start, q_start + num_heads), kv heads
    [kv_start, kv_start + num_kv_heads) of the checkpoint's."""

    q_start: int
    num_heads: int
    kv_start: int
    num_kv_heads: int


@dataclass(frozen=True)
class QKNorm:
    """RMSNorm of q and k before rotary: over each head (Qwen3, Gemma 3) or over the whole
    projection, all heads at once (OLMo 2); `weight_offset` None rounds as Llama's norms
    do, a number as `Float32RMSNorm` (Gemma 3: 1.0, OLMo 2: 0.0)."""

    eps: float
    per_head: bool = True
    weight_offset: float | None = None

    def build(self, size: int, ops: FusedOps) -> RMSNorm | Float32RMSNorm:
        if self.weight_offset is None:
            return RMSNorm(size, self.eps, ops)
        return Float32RMSNorm(size, self.eps, ops, self.weight_offset)


def even_split(n: int, parts: int, index: int) -> tuple[int, int]:
    """(start, count) of part `index` when n items are cut into `parts` near-equal runs,
    the first n % parts runs one longer."""
    base, extra = divmod(n, parts)
    return index * base + min(index, extra), base + (index < extra)


def valid_tp_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    return [t for t in range(1, num_heads + 1) if _shard_error(num_heads, num_kv_heads, t) is None]


def _shard_error(num_heads: int, num_kv_heads: int, tp_size: int) -> str | None:
    group = num_heads // num_kv_heads
    if tp_size <= num_kv_heads:
        return None
    if tp_size % num_kv_heads:
        return f"{tp_size} ranks cannot share {num_kv_heads} key/value heads evenly"
    if group % (tp_size // num_kv_heads):
        return f"the {group} query heads of each key/value head cannot be split over {tp_size // num_kv_heads} ranks"
    return None


def shard_heads(num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int) -> HeadShard:
    """Which heads rank `tp_rank` of `tp_size` holds, or ValueError naming the sizes that work.

    A kv head and the q heads that read it (GQA) always stay on one rank. With at least as
    many kv heads as ranks, the kv heads are dealt out in near-equal runs: an uneven count
    (SmolLM2: 3 kv heads over 2 ranks) gives the first ranks one more, and more attention
    work; the all_reduce of o_proj's partial sums does not care. With fewer kv heads than
    ranks, each kv head is replicated on tp_size // num_kv_heads consecutive ranks (vLLM's
    scheme), which split its q heads evenly.
    """
    if num_heads % num_kv_heads:
        raise ValueError(
            f"the model has {num_heads} attention heads, not a multiple of its {num_kv_heads} key/value heads"
        )
    why = _shard_error(num_heads, num_kv_heads, tp_size)
    if why is not None:
        raise ValueError(
            f"tensor_parallel_size={tp_size} cannot split this model's {num_heads} attention heads and "
            f"{num_kv_heads} key/value heads: {why}; use one of {valid_tp_sizes(num_heads, num_kv_heads)}"
        )
    group = num_heads // num_kv_heads
    if tp_size <= num_kv_heads:
        kv_start, kv_count = even_split(num_kv_heads, tp_size, tp_rank)
        return HeadShard(kv_start * group, kv_count * group, kv_start, kv_count)
    per_head = tp_size // num_kv_heads  # ranks sharing one kv head
    kv_start = tp_rank // per_head
    q_count = group // per_head
    return HeadShard(kv_start * group + (tp_rank % per_head) * q_count, q_count, kv_start, 1)


class Attention(nn.Module):
    def __init__(
        self,
        platform: Platform,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool = False,
        qk_norm: QKNorm | None = None,
        sliding_window: int | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
        scale: float | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        """`scale` multiplies q.k (default head_dim ** -0.5); `logits_soft_cap` caps the
        scores (AttentionSpec.logits_soft_cap)."""
        super().__init__()
        self.platform = platform
        # this rank's heads (all of them without tensor parallelism); load_weights reads
        # `shard` to slice them out of the checkpoint's q/k/v/o tensors
        self.shard = shard_heads(num_heads, num_kv_heads, tp_size, tp_rank)
        self.total_num_heads, self.total_num_kv_heads = num_heads, num_kv_heads
        self.spec = AttentionSpec(
            num_heads=self.shard.num_heads,
            num_kv_heads=self.shard.num_kv_heads,
            head_dim=head_dim,
            scale=head_dim**-0.5 if scale is None else scale,
            sliding_window=sliding_window,
            logits_soft_cap=logits_soft_cap,
        )
        self.q_size = self.spec.num_heads * head_dim
        self.kv_size = self.spec.num_kv_heads * head_dim
        # q, k and v in one GEMM: [q; k; v] rows, loaded shard by shard
        self.qkv_proj = Linear(hidden_size, self.q_size + 2 * self.kv_size, platform.linear, bias=qkv_bias)
        self.o_proj = Linear(self.q_size, hidden_size, platform.linear)
        self.q_norm: RMSNorm | Float32RMSNorm | None = None
        self.k_norm: RMSNorm | Float32RMSNorm | None = None
        self.qk_norm_per_head = qk_norm is None or qk_norm.per_head
        if qk_norm is not None:
            if not qk_norm.per_head and tp_size > 1:
                # each rank would hold a slice of what one norm must see whole
                raise ValueError(
                    "this model normalizes q and k over all attention heads at once, which tensor parallelism "
                    "would split across ranks; use tensor_parallel_size=1"
                )
            q_dim, k_dim = (head_dim, head_dim) if qk_norm.per_head else (self.q_size, self.kv_size)
            self.q_norm = qk_norm.build(q_dim, platform.ops)
            self.k_norm = qk_norm.build(k_dim, platform.ops)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        kv_cache: Any,
        meta: Any,
    ) -> torch.Tensor:
        p = self.platform
        t = x.shape[0]
        spec = self.spec
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None and self.k_norm is not None and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(t, spec.num_heads, spec.head_dim)
        k = k.reshape(t, spec.num_kv_heads, spec.head_dim)
        v = v.reshape(t, spec.num_kv_heads, spec.head_dim)
        if self.q_norm is not None and self.k_norm is not None and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = p.ops.rotary(q, k, positions, cos_sin_cache)
        o = p.attention.forward(q, k, v, kv_cache, meta, spec)
        return p.communicator.all_reduce(self.o_proj(o.reshape(t, self.q_size)))
