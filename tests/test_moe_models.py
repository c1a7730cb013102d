"""Mixtral, Qwen2-MoE and Qwen3-MoE equal Hugging Face transformers on tiny random-weight models
(float32): greedy tokens with prefill in chunks, prefix-cache hits and preemption in one run;
the fused expert tensors of transformers 5 load as the per-expert ones do; quantized experts
are refused by name."""

from __future__ import annotations

import pytest
import torch
from tiny_models import assert_greedy_matches, make_tiny_model, random_prompts, smollm2_tokenizer
from tiny_moe import MOE_ARCHS, tiny_moe_config

from octavo import LLM, SamplingParams
from octavo.layers.moe import MoEBlock

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {arch: make_tiny_model(arch, str(root / arch), tiny_moe_config(arch)) for arch in MOE_ARCHS}


def _greedy(llm, prompts, max_tokens=NEW_TOKENS):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_greedy_matches_transformers_chunked_cached_and_preempted(arch, moe_dirs, hf_reference):
    """Six prompts, three sharing a 40-token prefix (five blocks of 8: hits in the second
    round), prefilled in chunks of 16, in a KV cache that holds the longest alone but not all
    six at once (preemption)."""
    path = moe_dirs[arch]
    vocab = len(smollm2_tokenizer())
    prefix = random_prompts(1, [40], vocab, seed=5)[0]
    prompts = [prefix + s for s in random_prompts(3, [3, 9, 20], vocab, seed=6)] + random_prompts(3, [1, 50, 90], vocab)
    ref = hf_reference(path, prompts, NEW_TOKENS)
    llm = LLM(
        model=path,
        device="cpu",
        dtype="float32",
        max_model_len=128,
        block_size=8,
        num_gpu_blocks_override=-(-(90 + NEW_TOKENS) // 8) + 8,
        max_num_batched_tokens=16,  # every prompt but the shortest is prefilled in chunks
        enable_prefix_caching=True,
    )
    blocks = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, MoEBlock)]
    assert len(blocks) == {"mixtral": 2, "qwen2_moe": 2, "qwen3_moe": 1}[arch]  # the config's sparse layers
    for round in range(2):
        for i, (out, want) in enumerate(zip(_greedy(llm, prompts), ref)):
            what = f"{arch} round {round} prompt {i} ({len(prompts[i])} tokens)"
            assert_greedy_matches(path, prompts[i], out.outputs[0].token_ids, want, what)
    stats = llm.llm_engine.get_stats()
    assert stats.prefix_cache_hits > 0, "the second round was meant to find the shared prefix cached"
    assert stats.num_preemptions_total > 0, "the KV budget was meant to force preemption"


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_fused_expert_tensors_load_like_per_expert_ones(arch, moe_dirs):
    """transformers 5's in-memory layout ([E, 2I, H] gate_up_proj, [E, H, I] down_proj) gives the
    same stacked weights as the checkpoint's per-expert tensors."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from octavo.models import get_model_class
    from octavo.platform.discovery import resolve_platform

    path = moe_dirs[arch]
    per_expert = load_file(f"{path}/model.safetensors")
    fused = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    assert any(n.endswith("experts.gate_up_proj") for n in fused)  # the layout this test is about
    assert not any(n.endswith("experts.gate_up_proj") for n in per_expert)  # the file holds per-expert tensors
    cfg = AutoConfig.from_pretrained(path)
    models = [get_model_class(cfg)(resolve_platform("cpu"), cfg, 64) for _ in range(2)]
    models[0].load_weights(per_expert.items())
    models[1].load_weights(fused.items())
    want, got = dict(models[0].named_parameters()), dict(models[1].named_parameters())
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_quantized_experts_are_refused_by_name(moe_dirs):
    from octavo.models import get_model_class
    from octavo.platform.discovery import resolve_platform
    from octavo.quantization.scheme import QuantizationError

    cfg = tiny_moe_config("mixtral")
    with torch.device("meta"):
        model = get_model_class(cfg)(resolve_platform("cpu"), cfg, 64)
    assert model.linear_for("model.layers.0.self_attn.q_proj") is not None
    with pytest.raises(QuantizationError, match=r"quantized experts \(model.layers.0.block_sparse_moe.experts.3.w1\)"):
        model.linear_for("model.layers.0.block_sparse_moe.experts.3.w1")
