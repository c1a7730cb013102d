"""Granite (IBM Granite 3.x): the Llama graph with four multipliers from the config: the
embeddings times embedding_multiplier, attention scores scaled by attention_multiplier (in
place of head_dim ** -0.5), each attention and MLP output times residual_multiplier before it
joins the residual stream, and the logits divided by logits_scaling.

No `DecoderStructure`: the multipliers are not in that structure, so a platform's runner runs
this model's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.layers.attention import Attention
from octavo.models.llama import DecoderLayer, LlamaForCausalLM
from octavo.models.structure import DecoderStructure


class GraniteDecoderLayer(DecoderLayer):
    def __init__(self, model: LlamaForCausalLM, index: int) -> None:
        super().__init__(model, index)
        self.residual_multiplier = float(model.config.residual_multiplier)

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, cos_sin, kv_cache, meta) * self.residual_multiplier
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h) * self.residual_multiplier, residual


class GraniteForCausalLM(LlamaForCausalLM):
    def make_layer(self, index: int) -> nn.Module:
        return GraniteDecoderLayer(self, index)

    def make_attention(self, index: int) -> Attention:
        return self.build_attention(index, scale=float(self.config.attention_multiplier))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().embed(input_ids) * float(self.config.embedding_multiplier)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.lm_head is not None, "only the last pipeline stage computes logits"
        return (self.lm_head(hidden) / float(self.config.logits_scaling)).float()

    def structure(self) -> DecoderStructure | None:
        return None
