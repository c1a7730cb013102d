"""Tiny random-weight mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE) on SmolLM2's
vocabulary, saved as HF directories like tiny_models' (per-expert tensors, as checkpoints are)."""

from __future__ import annotations

from tiny_models import _COMMON, smollm2_tokenizer

MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")


def tiny_moe_config(arch: str):
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    vocab = len(smollm2_tokenizer())
    if arch == "mixtral":  # 8 experts, top-2, renormalized; a sliding window shorter than the long prompts
        return MixtralConfig(**_COMMON, vocab_size=vocab, num_local_experts=8, num_experts_per_tok=2, sliding_window=48)
    if arch == "qwen2_moe":  # q/k/v bias, a gated shared expert, no renormalization, a dense layer (mlp_only_layers)
        return Qwen2MoeConfig(
            **{**_COMMON, "num_hidden_layers": 3},
            vocab_size=vocab,
            num_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=96,
            norm_topk_prob=False,
            mlp_only_layers=[1],
        )
    if (
        arch == "qwen3_moe"
    ):  # q/k norm, head_dim != hidden / heads, 16 experts top-4 renormalized, every 2nd layer sparse
        return Qwen3MoeConfig(
            **{**_COMMON, "num_hidden_layers": 3},
            vocab_size=vocab,
            head_dim=32,
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            decoder_sparse_step=2,
        )
    raise ValueError(arch)
