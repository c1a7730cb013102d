"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): the Qwen3 graph (per-head q/k RMSNorm, no q/k/v
bias) whose sparse layers route as Qwen2-MoE's do, without a shared expert."""

from __future__ import annotations

from octavo.layers.moe import MoEBlock
from octavo.models.llama_moe import MoELlamaForCausalLM
from octavo.models.qwen2_moe import qwen_routing, sparse_layer


class Qwen3MoeForCausalLM(MoELlamaForCausalLM):
    qk_norm = True

    def is_sparse(self, index: int) -> bool:
        return sparse_layer(self.config, index)

    def make_moe(self) -> MoEBlock:
        cfg = self.config
        return MoEBlock(
            self.platform, self.routed_experts(cfg.moe_intermediate_size, cfg.num_experts, qwen_routing(cfg))
        )
