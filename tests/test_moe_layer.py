"""Mixture-of-experts layers against transformers' own modules: every router's choice (ties
included: equal scores are chosen as torch.topk chooses them there) and weights, DeepSeek's
grouped routing with and without V3's correction bias, and a whole sparse block (routed
experts, gated shared expert) in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch

from octavo.layers.linear import Linear
from octavo.layers.moe import FusedMoE, GroupedTopKRouting, MoEBlock, SharedExpert, TopKRouting
from octavo.platform.discovery import resolve_platform


def _inputs(tokens: int, hidden: int, seed: int) -> torch.Tensor:
    return torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(seed))


def _tied_router(num_experts: int, hidden: int, seed: int) -> torch.Tensor:
    """Router weights whose experts come in equal pairs (2k and 2k + 1 score alike for every
    token) with one all-zero row: ties at every rank of the top-k."""
    w = torch.randn(num_experts // 2, hidden, generator=torch.Generator().manual_seed(seed))
    w = w.repeat_interleave(2, dim=0)
    w[-1] = 0.0
    return w


def _hf_router(arch: str, num_experts: int, top_k: int, **extra):
    from transformers import DeepseekV2Config, DeepseekV3Config, MixtralConfig, Qwen2MoeConfig
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

    common = dict(hidden_size=32, num_experts_per_tok=top_k, **extra)
    if arch == "mixtral":
        return MixtralTopKRouter(MixtralConfig(num_local_experts=num_experts, **common))
    if arch == "qwen2_moe":
        return Qwen2MoeTopKRouter(Qwen2MoeConfig(num_experts=num_experts, **common))
    if arch == "deepseek_v2":
        return DeepseekV2TopkRouter(DeepseekV2Config(n_routed_experts=num_experts, **common))
    return DeepseekV3TopkRouter(DeepseekV3Config(n_routed_experts=num_experts, **common))


@pytest.mark.parametrize(
    "arch,num_experts,top_k,extra,ours",
    [
        ("mixtral", 8, 2, {}, TopKRouting(2, renormalize=True)),
        ("qwen2_moe", 60, 4, {"norm_topk_prob": False}, TopKRouting(4, renormalize=False, round_weights=True)),
        ("qwen2_moe", 128, 8, {"norm_topk_prob": True}, TopKRouting(8, renormalize=True, round_weights=True)),
        (
            "deepseek_v2",
            16,
            4,
            {"topk_method": "greedy", "routed_scaling_factor": 1.5},
            GroupedTopKRouting(4, scaling=1.5),
        ),
        (
            "deepseek_v2",
            16,
            3,
            {"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2, "routed_scaling_factor": 16.0},
            GroupedTopKRouting(3, num_groups=4, topk_groups=2, scaling=16.0),
        ),
        (
            "deepseek_v3",
            32,
            8,
            {"n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": True},
            GroupedTopKRouting(8, 8, 4, scoring="sigmoid", renormalize=True, scaling=2.5),
        ),
        (
            "deepseek_v3",
            16,
            4,
            {"n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "norm_topk_prob": False},
            GroupedTopKRouting(4, scoring="sigmoid"),
        ),
    ],
    ids=["mixtral", "qwen2-raw", "qwen3-norm", "v2-greedy", "v2-grouped", "v3-noaux_tc", "v3-one-group"],
)
@pytest.mark.parametrize("tied", [False, True], ids=["random", "ties"])
def test_routing_equals_transformers(arch, num_experts, top_k, extra, ours, tied):
    hf = _hf_router(arch, num_experts, top_k, **extra)
    with torch.no_grad():
        w = _tied_router(num_experts, 32, seed=3) if tied else torch.randn(num_experts, 32) * 0.3
        hf.weight.copy_(w)
        bias = None
        if arch == "deepseek_v3":
            bias = torch.randn(num_experts, generator=torch.Generator().manual_seed(4)) * 0.1
            if tied:
                bias = bias.repeat_interleave(2)[:num_experts]  # keep the pairs tied
            hf.e_score_correction_bias.copy_(bias)
    x = _inputs(37, 32, seed=5)
    if tied:
        x[:5] = 0.0  # every logit equal: all experts tie
    logits, want_w, want_ids = hf(x)
    got_w, got_ids = ours(logits, bias)
    assert torch.equal(got_ids, want_ids)
    assert got_w.dtype == torch.float32
    assert torch.equal(got_w, want_w.float())


def _shared_block_pair(dtype: torch.dtype):
    """transformers' Qwen2-MoE sparse block and ours with its weights, in `dtype`."""
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = Qwen2MoeConfig(
        hidden_size=64,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=80,
        num_experts=12,
        num_experts_per_tok=3,
        norm_topk_prob=True,
    )
    torch.manual_seed(0)
    hf = Qwen2MoeSparseMoeBlock(cfg)
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.15)
    hf = hf.to(dtype)
    platform = resolve_platform("cpu")
    routing = TopKRouting(3, renormalize=True, round_weights=True)
    ours = MoEBlock(
        platform,
        FusedMoE(platform, 64, 48, 12, routing),
        SharedExpert(platform, 64, 80, gated=True),
    ).to(dtype)
    with torch.no_grad():
        ours.experts.gate.weight.copy_(hf.gate.weight)
        ours.experts.w13.copy_(hf.experts.gate_up_proj.reshape(-1, 64))
        ours.experts.w2.copy_(hf.experts.down_proj.reshape(-1, 48))
        se = hf.shared_expert
        ours.shared.gate_up_proj.weight.copy_(torch.cat([se.gate_proj.weight, se.up_proj.weight]))
        ours.shared.down_proj.weight.copy_(se.down_proj.weight)
        ours.shared.expert_gate.weight.copy_(hf.shared_expert_gate.weight)
    for m in ours.modules():  # as the runner does once the weights are in (octavo-cpu packs them)
        if isinstance(m, Linear):
            m.method.process_weights_after_loading(m)
    return hf, ours


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_sparse_block_equals_transformers(dtype, tol):
    hf, ours = _shared_block_pair(dtype)
    x = _inputs(300, 64, seed=1).to(dtype)
    with torch.no_grad():
        want = hf(x.unsqueeze(0)).squeeze(0).float()
        got = ours(x).float()
    assert got.dtype == torch.float32 and tuple(got.shape) == (300, 64)
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs error {err:.3g}"


def test_expert_parallel_needs_a_divisible_expert_count():
    platform = resolve_platform("cpu")
    platform.communicator.world_size = 2  # as a rank of a 2-rank run would see it (nothing is communicated)
    try:
        with pytest.raises(ValueError, match="cannot split 5 experts evenly"):
            FusedMoE(platform, 8, 8, 5, TopKRouting(1, renormalize=False), expert_parallel=True)
        layer = FusedMoE(platform, 8, 8, 6, TopKRouting(1, renormalize=False), expert_parallel=True)
        assert layer.num_local == 3 and layer.intermediate == 8  # whole experts, 3 per rank
        assert layer.expert_target(4, "up")[0] is None  # rank 0 skips rank 1's experts when loading
        assert layer.expert_target(2, "down")[1] == (2 * 8, 8)
    finally:
        platform.communicator.world_size = 1
