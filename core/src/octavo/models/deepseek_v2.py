"""DeepSeek-V2 / V2-Lite / V3: Llama's pre-norm decoder with multi-head latent attention
(layers/mla.py) and, from layer `first_k_dense_replace` on, mixture-of-experts MLPs
(layers/moe.py: DeepSeek's grouped top-k routing, shared experts).

- q is one projection where `q_lora_rank` is None (V2-Lite), else a low-rank pair with an
  RMSNorm between (V2, V3);
- the rotary part of q and k (qk_rope_head_dim features) rotates DeepSeek's way: feature
  pairs (2i, 2i + 1) share a frequency (V2's complex product, V3's `rope_interleave`). The
  loader reorders those rows of the q and kv_a projections (evens, then odds) so that the
  platform's rotate-half `rotary` op computes the same products; scores are unchanged, since
  q and k are reordered alike;
- YaRN scaling as transformers computes it: the rotary table from its rope functions (their
  attention factor included), and the softmax scale times mscale(factor, mscale_all_dim)^2;
- routing: V2 scores by softmax, over all experts (`greedy`) or the best `topk_group` of
  `n_group` groups (`group_limited_greedy`), never renormalized (transformers' V2 ignores
  norm_topk_prob); V3 by sigmoid with the per-expert correction bias choosing (noaux_tc),
  renormalized when norm_topk_prob; both scaled by routed_scaling_factor; the
  n_shared_experts as one wider MLP every token goes through.
"""

from __future__ import annotations

import math

import torch

from octavo.layers.linear import Linear
from octavo.layers.mla import LatentAttention
from octavo.layers.moe import FusedMoE, GroupedTopKRouting, MoEBlock, SharedExpert
from octavo.layers.rotary import build_cos_sin_cache, rope_parameters
from octavo.models.llama_moe import MoELlamaForCausalLM
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


class DeepseekV2ForCausalLM(MoELlamaForCausalLM):
    def __init__(self, platform: Platform, hf_config, max_positions: int, enable_expert_parallel: bool = False):
        if platform.communicator.world_size > 1:
            raise ValueError(
                "DeepSeek's latent attention does not run with tensor (or expert) parallelism in octavo yet; "
                "use tensor_parallel_size=1"
            )
        super().__init__(platform, hf_config, max_positions, enable_expert_parallel)

    def is_sparse(self, index: int) -> bool:
        cfg = self.config
        first_dense = cfg.first_k_dense_replace or 0
        return bool(cfg.n_routed_experts) and index >= first_dense and index % getattr(cfg, "moe_layer_freq", 1) == 0

    def routing(self) -> tuple[GroupedTopKRouting, bool]:
        """V2's routing and whether it has a correction bias (no: V3 overrides)."""
        cfg = self.config
        grouped = getattr(cfg, "topk_method", "greedy") == "group_limited_greedy"
        routing = GroupedTopKRouting(
            cfg.num_experts_per_tok,
            num_groups=cfg.n_group if grouped else 1,
            topk_groups=cfg.topk_group if grouped else 1,
            scoring="softmax",
            scaling=cfg.routed_scaling_factor,
        )
        return routing, False

    def make_moe(self) -> MoEBlock:
        cfg = self.config
        act = getattr(cfg, "hidden_act", None) or "silu"
        routing, bias = self.routing()
        experts = FusedMoE(
            self.platform,
            cfg.hidden_size,
            cfg.moe_intermediate_size,
            cfg.n_routed_experts,
            routing,
            act,
            self.expert_parallel,
            correction_bias=bias,
        )
        shared = None
        if cfg.n_shared_experts:
            shared = SharedExpert(
                self.platform, cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts, False, act
            )
        return MoEBlock(self.platform, experts, shared)

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

    # ---- weights -------------------------------------------------------------------
    def _target(self, name: str):
        parts = name.removeprefix("model.").split(".")
        if len(parts) > 2 and parts[0] == "layers" and int(parts[1]) >= self.config.num_hidden_layers:
            return None, None, None  # V3's multi-token-prediction layers: not used for generation
        if parts[2:] == ["self_attn", "kv_b_proj", "weight"]:
            layer = self._layer(name.removeprefix("model."))  # None: another pipeline stage's
            return (layer.self_attn.kv_b_proj if layer is not None else None), None, None
        if parts[2:] == ["mlp", "gate", "e_score_correction_bias"]:
            layer = self._layer(name.removeprefix("model."))
            if layer is None:
                return None, None, None
            if not isinstance(layer.mlp, MoEBlock) or layer.mlp.experts.correction_bias is None:
                raise KeyError(name)
            return layer.mlp.experts.correction_bias, None, None
        return super()._target(name)

    def _linear_entry(self, stem: str):
        parts = stem.split(".")
        if len(parts) < 3 or parts[0] != "layers":
            return super()._linear_entry(stem)
        layer = self._layer(stem)
        if layer is None:  # another pipeline stage's layer
            return None, None, None
        rest = ".".join(parts[2:])
        if rest.startswith("self_attn."):
            linear = getattr(layer.self_attn, rest.removeprefix("self_attn."), None)
            return (linear, None, None) if isinstance(linear, Linear) else (None, None, None)
        return self._mlp_entries(layer.mlp).get(rest, (None, None, None))

    def _mlp_entries(self, mlp):
        if not isinstance(mlp, MoEBlock):
            return super()._mlp_entries(mlp)
        entries: dict[str, tuple] = {"mlp.gate": (mlp.experts.gate, None, None)}  # the router
        if mlp.shared is not None:
            entries.update(mlp.shared.linear_entries("mlp.shared_experts"))
        return entries

    @torch.no_grad()
    def load_weights(self, weights) -> None:
        super().load_weights(weights)
        if self._interleaved_rope():
            for layer in self._decoder_layers():
                assert isinstance(layer.self_attn, LatentAttention)
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
        kv = attn.kv_a_proj_with_mqa
        assert isinstance(q, Linear) and isinstance(kv, Linear)
        q_weight = q.weight
        assert isinstance(q_weight, torch.Tensor)
        q_rows = q_weight.view(attn.num_heads, attn.nope + rope, -1)[:, attn.nope :]
        q_rows.copy_(q_rows[:, order.to(q_rows.device)])
        for tensor in (kv.weight, kv.bias):
            if isinstance(tensor, torch.Tensor):
                rows = tensor[attn.rank :]
                rows.copy_(rows[order.to(rows.device)])


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    def routing(self) -> tuple[GroupedTopKRouting, bool]:
        cfg = self.config
        routing = GroupedTopKRouting(
            cfg.num_experts_per_tok,
            num_groups=cfg.n_group or 1,
            topk_groups=cfg.topk_group or 1,
            scoring="sigmoid",
            renormalize=bool(cfg.norm_topk_prob),
            scaling=cfg.routed_scaling_factor,
        )
        return routing, True

    def _interleaved_rope(self) -> bool:
        return bool(getattr(self.config, "rope_interleave", True))
