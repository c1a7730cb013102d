"""OLMo 2: the Llama graph with its norms moved after the blocks they follow: no norm before
attention or the MLP, one after each (post_attention_layernorm, post_feedforward_layernorm)
before its output joins the residual stream; q and k RMS-normalized over the whole projection
(all heads at once, so tensor parallelism is refused); every norm multiplies by its weight in
float32 and rounds once (`Float32RMSNorm`).

No `DecoderStructure` (its norms are not that structure's): a platform's runner runs this
model's own forward.
"""

from __future__ import annotations

from torch import nn

from octavo.layers.attention import Attention, QKNorm
from octavo.layers.norm import Float32RMSNorm, RMSNorm
from octavo.models.llama import LlamaForCausalLM
from octavo.models.structure import DecoderStructure


class Olmo2DecoderLayer(nn.Module):
    """x -> x + post_attention_layernorm(attention(x)) -> + post_feedforward_layernorm(mlp(.)),
    the last add deferred to the next layer (or the final norm's fused add) as `residual`."""

    def __init__(self, model: LlamaForCausalLM, index: int) -> None:
        super().__init__()
        hidden = model.config.hidden_size
        self.self_attn = model.make_attention(index)
        self.mlp = model.make_mlp()
        self.post_attention_layernorm = model.make_norm(hidden)
        self.post_feedforward_layernorm = model.make_norm(hidden)

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        if residual is not None:
            x = x + residual
        x = x + self.post_attention_layernorm(self.self_attn(x, positions, cos_sin, kv_cache, meta))
        return self.post_feedforward_layernorm(self.mlp(x)), x


class Olmo2ForCausalLM(LlamaForCausalLM):
    def make_layer(self, index: int) -> nn.Module:
        return Olmo2DecoderLayer(self, index)

    def make_attention(self, index: int) -> Attention:
        qk_norm = QKNorm(self.config.rms_norm_eps, per_head=False, weight_offset=0.0)
        return self.build_attention(index, qk_norm)

    def make_norm(self, size: int) -> RMSNorm | Float32RMSNorm:
        return Float32RMSNorm(size, self.config.rms_norm_eps, self.platform.ops)

    def structure(self) -> DecoderStructure | None:
        return None
