"""DeepSeek-V2 / V2-Lite / V3: Llama's pre-norm decoder with multi-head latent attention
(layers/mla.py) and, from layer `first_k_dense_replace` on, mixture-of-experts MLPs.

- q is one projection where `q_lora_rank` is None (V2-Lite), else a low-rank pair with an
  RMSNorm between (V2, V3);
- the rotary part of q and k (qk_rope_head_dim features) rotates DeepSeek's way: feature
  pairs (2i, 2i + 1) share a frequency (V2's complex product, V3's `rope_interleave`). The
  loader reorders those rows of the q and kv_a projections (evens, then odds) so that the
  platform's rotate-half `rotary` op computes the same products; scores are unchanged, since
  q and k are reordered alike;
- YaRN scaling as transformers computes it: the rotary table from its rope functions (their
  attention factor included), and the softmax scale times mscale(factor, mscale_all_dim)^2.

The weights of MoE layers come only with octavo.layers.moe (issue 24a): until then a config
with such layers is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from octavo.layers.linear import Linear
from octavo.layers.mla import LatentAttention
from octavo.layers.norm import RMSNorm
from octavo.layers.rotary import build_cos_sin_cache, rope_parameters
from octavo.models.llama import LlamaForCausalLM
from octavo.models.structure import DecoderStructure
from octavo.platform import Platform


def softmax_scale(hf_config) -> float:
    """qk_head_dim ** -0.5, times YaRN's mscale squared where the rope scaling sets mscale_all_dim."""
    scale = (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim) ** -0.5
    params = rope_parameters(hf_config)
    all_dim = params.get("mscale_all_dim") or 0
    factor = float(params.get("factor") or 1.0)
    if params["rope_type"] != "default" and all_dim and factor > 1:
        mscale = 0.1 * all_dim * math.log(factor) + 1.0
        scale *= mscale * mscale
    return scale


class DeepseekDecoderLayer(nn.Module):
    """Llama's layer (models/llama.py DecoderLayer) with latent attention; a dense MLP on the
    first `first_k_dense_replace` layers."""

    def __init__(self, model: DeepseekV2ForCausalLM, index: int) -> None:
        super().__init__()
        cfg, platform = model.config, model.platform
        self.self_attn = model.make_attention(index)
        if index < (cfg.first_k_dense_replace or 0) or not getattr(cfg, "n_routed_experts", None):
            self.mlp = model.make_mlp()
        else:
            raise ValueError(
                f"layer {index} of this DeepSeek model is a mixture of experts, which octavo does not run yet "
                "(octavo.layers.moe); models whose layers are all dense (first_k_dense_replace = "
                "num_hidden_layers) run"
            )
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, platform.ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, platform.ops)

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, cos_sin, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class DeepseekV2ForCausalLM(LlamaForCausalLM):
    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        if platform.communicator.world_size > 1:
            raise ValueError(
                "DeepSeek's latent attention does not run with tensor parallelism in octavo yet; "
                "use tensor_parallel_size=1"
            )
        super().__init__(platform, hf_config, max_positions)

    def make_layer(self, index: int) -> nn.Module:
        return DeepseekDecoderLayer(self, index)

    def make_attention(self, index: int) -> LatentAttention:  # type: ignore[override]
        cfg = self.config
        return LatentAttention(
            self.platform,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.q_lora_rank,
            cfg.kv_lora_rank,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            softmax_scale(cfg),
            cfg.rms_norm_eps,
            bias=bool(getattr(cfg, "attention_bias", False)),
        )

    def make_cos_sin_cache(self, max_positions: int) -> torch.Tensor:
        return build_cos_sin_cache(self.config, self.config.qk_rope_head_dim, max_positions)

    def structure(self) -> DecoderStructure | None:
        return None  # latent attention is not that structure's

    # ---- weights -------------------------------------------------------------------
    def _target(self, name: str):
        parts = name.removeprefix("model.").split(".")
        if len(parts) > 2 and parts[0] == "layers" and int(parts[1]) >= self.config.num_hidden_layers:
            return None, None, None  # V3's multi-token-prediction layers: not used for generation
        if parts[2:] == ["self_attn", "kv_b_proj", "weight"]:
            return self._decoder_layers()[int(parts[1])].self_attn.kv_b_proj, None, None
        return super()._target(name)

    def _linear_entry(self, stem: str):
        parts = stem.split(".")
        if len(parts) < 3 or parts[0] != "layers":
            return super()._linear_entry(stem)
        layer = self._decoder_layers()[int(parts[1])]
        rest = ".".join(parts[2:])
        if rest.startswith("self_attn."):
            linear = getattr(layer.self_attn, rest.removeprefix("self_attn."), None)
            return (linear, None, None) if isinstance(linear, Linear) else (None, None, None)
        inter = layer.mlp.intermediate
        table = {
            "mlp.gate_proj": (layer.mlp.gate_up_proj, (0, inter), None),
            "mlp.up_proj": (layer.mlp.gate_up_proj, (inter, inter), None),
            "mlp.down_proj": (layer.mlp.down_proj, None, None),
        }
        return table.get(rest, (None, None, None))

    @torch.no_grad()
    def load_weights(self, weights) -> None:
        super().load_weights(weights)
        if self._interleaved_rope():
            for layer in self._decoder_layers():
                self._deinterleave_rope_rows(layer.self_attn)

    def _interleaved_rope(self) -> bool:
        """Whether the checkpoint's rotary features come in interleaved pairs (always in V2)."""
        return True

    def _deinterleave_rope_rows(self, attn: LatentAttention) -> None:
        """Reorder each rotary block of rows (q's per head, kv_a's one) from interleaved pairs
        to halves: rows 0, 2, 4, ... then 1, 3, 5, ... (see the module doc)."""
        rope = attn.rope
        order = torch.cat([torch.arange(0, rope, 2), torch.arange(1, rope, 2)])
        q = attn.q_proj if attn.q_proj is not None else attn.q_b_proj
        assert q is not None
        q_rows = q.weight.view(attn.num_heads, attn.nope + rope, -1)[:, attn.nope :]
        q_rows.copy_(q_rows[:, order.to(q_rows.device)])
        kv = attn.kv_a_proj_with_mqa
        for tensor in (kv.weight, kv.bias):
            if tensor is not None:
                rows = tensor[attn.rank :]
                rows.copy_(rows[order.to(rows.device)])


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    def _interleaved_rope(self) -> bool:
        return bool(getattr(self.config, "rope_interleave", True))
