"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): the Qwen2 graph whose sparse layers (every
`decoder_sparse_step`-th, except `mlp_only_layers`) route each token to its top
`num_experts_per_tok` experts by softmax (renormalized when `norm_topk_prob`) and add a shared
expert scaled by sigmoid(shared_expert_gate(x))."""

from __future__ import annotations

from octavo.layers.moe import MoEBlock, SharedExpert, TopKRouting
from octavo.models.llama_moe import MoELlamaForCausalLM
from octavo.platform import Platform


def sparse_layer(cfg, index: int) -> bool:
    """Qwen's rule for which layers are mixtures of experts."""
    if index in (getattr(cfg, "mlp_only_layers", None) or []):
        return False
    return cfg.num_experts > 0 and (index + 1) % getattr(cfg, "decoder_sparse_step", 1) == 0


def qwen_routing(cfg) -> TopKRouting:
    # transformers rounds Qwen's routing weights to the model's dtype
    return TopKRouting(cfg.num_experts_per_tok, renormalize=bool(cfg.norm_topk_prob), round_weights=True)


class Qwen2MoeForCausalLM(MoELlamaForCausalLM):
    def __init__(self, platform: Platform, hf_config, max_positions: int, enable_expert_parallel: bool = False):
        self.qkv_bias = bool(getattr(hf_config, "qkv_bias", True))
        super().__init__(platform, hf_config, max_positions, enable_expert_parallel)

    def is_sparse(self, index: int) -> bool:
        return sparse_layer(self.config, index)

    def make_moe(self) -> MoEBlock:
        cfg = self.config
        experts = self.routed_experts(cfg.moe_intermediate_size, cfg.num_experts, qwen_routing(cfg))
        shared = None
        if getattr(cfg, "shared_expert_intermediate_size", 0):
            act = getattr(cfg, "hidden_act", None) or "silu"
            shared = SharedExpert(self.platform, cfg.hidden_size, cfg.shared_expert_intermediate_size, True, act)
        return MoEBlock(self.platform, experts, shared)
