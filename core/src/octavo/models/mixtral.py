"""Mixtral: the Mistral graph whose every MLP is `num_local_experts` SiLU-gated experts, each token
going to its top `num_experts_per_tok` by softmax, the weights renormalized to sum 1."""

from __future__ import annotations

from octavo.layers.moe import MoEBlock, TopKRouting
from octavo.models.llama_moe import MoELlamaForCausalLM


class MixtralForCausalLM(MoELlamaForCausalLM):
    moe_prefix = "block_sparse_moe"

    def make_moe(self) -> MoEBlock:
        cfg = self.config
        routing = TopKRouting(cfg.num_experts_per_tok, renormalize=True)  # float32 weights, as transformers'
        return MoEBlock(self.platform, self.routed_experts(cfg.intermediate_size, cfg.num_local_experts, routing))
