"""Self-attention over the paged KV cache (q/k/v projection, rotary, platform attention).

With tensor parallelism (Megatron style) each rank holds a slice of the heads: qkv_proj is
column-parallel (its q heads and the kv heads they read), o_proj row-parallel, and the
partial o_proj outputs are summed by the communicator's all_reduce.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import AttentionMetadata, Platform


def split_heads(num_heads: int, num_kv_heads: int, tp_size: int) -> tuple[int, int]:
    """(q heads, kv heads) per rank, or ValueError saying which sizes would work.

    KV heads are split like q heads when there are at least as many as ranks; with fewer,
    each kv head is replicated on tp_size // num_kv_heads consecutive ranks (vLLM's scheme),
    so every rank still holds exactly the kv heads its q heads read.
    """
    ok = [t for t in range(1, num_heads + 1)
          if num_heads % t == 0 and (num_kv_heads % t == 0 or t % num_kv_heads == 0)]
    if num_heads % tp_size or (num_kv_heads % tp_size and tp_size % num_kv_heads):
        raise ValueError(
            f"tensor_parallel_size={tp_size} cannot split this model's {num_heads} attention heads and "
            f"{num_kv_heads} key/value heads evenly; use one of {ok}")
    return num_heads // tp_size, max(1, num_kv_heads // tp_size)


class Attention(nn.Module):
    def __init__(
        self,
        platform: Platform,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool = False,
        qk_norm_eps: float | None = None,
        sliding_window: int | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        super().__init__()
        self.platform = platform
        # this rank's heads: q heads [tp_rank * num_heads, +num_heads) of the checkpoint's,
        # kv heads from kv_head_start (shared by several ranks when replicated)
        self.num_heads, self.num_kv_heads = split_heads(num_heads, num_kv_heads, tp_size)
        self.kv_head_start = tp_rank * num_kv_heads // tp_size
        self.total_num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        self.scale = head_dim**-0.5
        self.sliding_window = sliding_window
        # q, k and v in one GEMM: [q; k; v] rows, loaded shard by shard
        self.qkv_proj = nn.Parameter(torch.empty(self.q_size + 2 * self.kv_size, hidden_size), requires_grad=False)
        self.qkv_bias = (
            nn.Parameter(torch.empty(self.q_size + 2 * self.kv_size), requires_grad=False) if qkv_bias else None
        )
        self.o_proj = nn.Parameter(torch.empty(hidden_size, self.q_size), requires_grad=False)
        self.qk_norm_eps = qk_norm_eps
        if qk_norm_eps is not None:  # Qwen3: RMSNorm over each head's q and k
            self.q_norm = nn.Parameter(torch.ones(head_dim), requires_grad=False)
            self.k_norm = nn.Parameter(torch.ones(head_dim), requires_grad=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        p = self.platform
        t = x.shape[0]
        qkv = p.linear(x, self.qkv_proj, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm_eps is not None:
            q = p.rms_norm(q, self.q_norm, self.qk_norm_eps)
            k = p.rms_norm(k, self.k_norm, self.qk_norm_eps)
        q, k = p.rotary(q, k, positions, cos_sin_cache)
        p.attention.write_kv(k, v, kv_cache, meta.slot_mapping)
        o = p.attention.attend(q, kv_cache, meta, self.scale, self.sliding_window)
        out = p.linear(o.reshape(t, self.q_size), self.o_proj)
        return p.communicator.all_reduce(out)
