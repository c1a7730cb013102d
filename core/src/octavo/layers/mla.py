"""Multi-head latent attention (DeepSeek-V2/V3's MLA) over a latent KV cache.

MLA compresses a token's keys and values into one latent vector c (kv_lora_rank features,
after kv_a_layernorm) plus one rotary key k_pe (qk_rope_head_dim features) shared by all
heads; per head, k_nope = W_UK[h] c and v = W_UV[h] c (kv_b_proj's rows). The cache keeps
only [c, k_pe] per token: at DeepSeek-V3's sizes 576 values where per-head K/V would hold
128 x (192 + 128).

Attention runs absorbed, decode and prefill alike: q_nope . k_nope = (W_UK[h]^T q_nope) . c,
so each head's q becomes [W_UK[h]^T q_nope, q_pe] and scores against the cached entries
directly (multi-query attention with one 576-feature head); the weighted sum of latents
comes back through W_UV[h]. The back end sees only entries (`write_latent`, `attend_latent`,
octavo.platform.attention). kv_b_proj is therefore a plain weight, never a GEMM's: it is read
per head by the two batched matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from octavo.layers.linear import Linear
from octavo.layers.norm import RMSNorm
from octavo.platform import AttentionSpec, Platform


class LatentAttention(nn.Module):
    def __init__(
        self,
        platform: Platform,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        scale: float,
        eps: float,
        bias: bool = False,
    ) -> None:
        """`q_lora_rank` None: q is one projection (DeepSeek-V2-Lite), else q_a_proj, its norm
        and q_b_proj. `bias`: the config's attention_bias (q_a, kv_a and o projections)."""
        super().__init__()
        self.platform = platform
        self.num_heads = num_heads
        self.nope, self.rope, self.v_dim, self.rank = qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
        q_out = num_heads * (qk_nope_head_dim + qk_rope_head_dim)
        self.q_proj: Linear | None = None
        self.q_a_proj: Linear | None = None
        self.q_a_layernorm: RMSNorm | None = None
        self.q_b_proj: Linear | None = None
        if q_lora_rank is None:
            self.q_proj = Linear(hidden_size, q_out, platform.linear)
        else:
            self.q_a_proj = Linear(hidden_size, q_lora_rank, platform.linear, bias=bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, eps, platform.ops)
            self.q_b_proj = Linear(q_lora_rank, q_out, platform.linear)
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, platform.linear, bias=bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, eps, platform.ops)
        # [num_heads * (nope + v), rank]: each head's W_UK rows, then its W_UV rows
        self.kv_b_proj = nn.Parameter(
            torch.empty(num_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank), requires_grad=False
        )
        self.o_proj = Linear(num_heads * v_head_dim, hidden_size, platform.linear, bias=bias)
        self.spec = AttentionSpec(
            num_heads=num_heads,
            num_kv_heads=1,
            head_dim=kv_lora_rank + qk_rope_head_dim,
            scale=scale,
            latent_dim=kv_lora_rank,
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, kv_cache: Any, meta: Any
    ) -> torch.Tensor:
        p = self.platform
        t = x.shape[0]
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_a_proj is not None and self.q_a_layernorm is not None and self.q_b_proj is not None
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(t, self.num_heads, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent.contiguous())
        q_pe, k_pe = p.ops.rotary(q_pe, k_pe.unsqueeze(1), positions, cos_sin_cache)
        w = self.kv_b_proj.view(self.num_heads, self.nope + self.v_dim, self.rank)
        # absorbed: head h's q_nope through W_UK[h]^T, a query against the latent itself
        q_latent = torch.bmm(q_nope.transpose(0, 1), w[:, : self.nope]).transpose(0, 1)  # [T, H, rank]
        entry = torch.cat([latent, k_pe.reshape(t, self.rope)], dim=-1)
        p.attention.write_latent(entry, kv_cache, meta)
        o_latent = p.attention.attend_latent(torch.cat([q_latent, q_pe], dim=-1), kv_cache, meta, self.spec)
        o = torch.bmm(o_latent.transpose(0, 1), w[:, self.nope :].transpose(1, 2))  # [H, T, v]: W_UV[h] per head
        return self.o_proj(o.transpose(0, 1).reshape(t, self.num_heads * self.v_dim))
