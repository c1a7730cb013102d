"""Gemma 2: the Llama graph with Gemma's changes; Gemma 3 (text) subclasses it.

- norms around both halves of a layer (input and post-attention, pre- and post-feedforward),
  each RMSNorm scaling by 1 + weight in float32 (`Float32RMSNorm`, offset 1);
- a GeGLU MLP (gelu's tanh approximation, `gelu_tanh_and_mul`);
- embeddings scaled by sqrt(hidden_size), the factor rounded to the run's dtype as the
  reference does (a buffer that `model.to(dtype)` rounds);
- attention scores scaled by query_pre_attn_scalar ** -0.5 and soft-capped
  (`AttentionSpec.logits_soft_cap`: the platform's attention must support it), on layers
  alternating between a sliding window and global attention (`layer_types`);
- the final logits soft-capped: c * tanh(logits / c).

No `DecoderStructure`: its norms, MLP and residual stream are not that structure's, so a
platform's runner runs this model's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.layers.attention import Attention, QKNorm
from octavo.layers.norm import Float32RMSNorm, RMSNorm
from octavo.layers.rotary import build_cos_sin_cache
from octavo.models.llama import MLP, LlamaForCausalLM
from octavo.models.structure import DecoderStructure
from octavo.platform import Platform


class GemmaDecoderLayer(nn.Module):
    """h = input_layernorm(x); attention; post_attention_layernorm, added to the residual
    stream; pre_feedforward_layernorm; MLP; post_feedforward_layernorm, added to it (the add
    deferred to the next norm, as in Llama's layer)."""

    def __init__(self, model: Gemma2ForCausalLM, index: int) -> None:
        super().__init__()
        hidden = model.config.hidden_size
        self.self_attn = model.make_attention(index)
        self.mlp = model.make_mlp()
        self.input_layernorm = model.make_norm(hidden)
        self.post_attention_layernorm = model.make_norm(hidden)
        self.pre_feedforward_layernorm = model.make_norm(hidden)
        self.post_feedforward_layernorm = model.make_norm(hidden)
        self.rope_table = model.rope_table(index)  # which of the model's rotary tables

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, cos_sin[self.rope_table], kv_cache, meta)
        h, residual = self.pre_feedforward_layernorm(self.post_attention_layernorm(h), residual)
        return self.post_feedforward_layernorm(self.mlp(h)), residual


class Gemma2ForCausalLM(LlamaForCausalLM):
    embed_scale: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        if getattr(hf_config, "use_bidirectional_attention", False):
            raise ValueError(
                "Gemma with use_bidirectional_attention (an encoder) is not supported: it generates no text"
            )
        super().__init__(platform, hf_config, max_positions)
        self.register_buffer("embed_scale", torch.tensor(hf_config.hidden_size**0.5), persistent=False)

    def make_layer(self, index: int) -> nn.Module:
        return GemmaDecoderLayer(self, index)

    def make_attention(self, index: int) -> Attention:
        cfg = self.config
        # Gemma 3: per-head q/k norms, scaling by 1 + weight as its other norms do
        qk_norm = QKNorm(cfg.rms_norm_eps, weight_offset=1.0) if self.qk_norm else None
        scale = cfg.query_pre_attn_scalar**-0.5
        return self.build_attention(index, qk_norm, scale, getattr(cfg, "attn_logit_softcapping", None))

    def make_mlp(self) -> MLP:
        cfg = self.config
        act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
        return MLP(self.platform, cfg.hidden_size, cfg.intermediate_size, self.tp_rank, self.tp_size, act)

    def make_norm(self, size: int) -> RMSNorm | Float32RMSNorm:
        return Float32RMSNorm(size, self.config.rms_norm_eps, self.platform.ops, weight_offset=1.0)

    def make_cos_sin_cache(self, max_positions: int) -> torch.Tensor:
        """[tables, max_positions, rot_dim]: Gemma 2 has one table for all its layers."""
        return build_cos_sin_cache(self.config, self.head_dim, max_positions)[None]

    def rope_table(self, index: int) -> int:
        """The rotary table layer `index` reads (an index into cos_sin_cache)."""
        return 0

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().embed(input_ids) * self.embed_scale

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.lm_head is not None, "only the last pipeline stage computes logits"
        logits = self.lm_head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    def structure(self) -> DecoderStructure | None:
        return None
