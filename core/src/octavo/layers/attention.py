"""Self-attention over the paged KV cache (q/k/v projection, rotary, platform attention)."""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import AttentionMetadata, Platform


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
    ) -> None:
        super().__init__()
        self.platform = platform
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
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
