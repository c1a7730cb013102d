"""DeepSeek-V2 / V3 with multi-head latent attention (issue 24, part B).

Greedy tokens equal Hugging Face transformers on tiny random-weight configs (float32), a first
dense layer then experts: V2-Lite's q without LoRA and greedy routing, V2's q LoRA with YaRN's
mscale and group-limited routing, V3's interleaved rope, YaRN and sigmoid routing with a
correction bias; prefill in chunks, prefix-cache hits and preemption. The latent cache costs layers x (kv_lora_rank +
qk_rope_head_dim) x dtype bytes a token, and octavo-cpu's latent attention equals the kit's
reference.
"""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_models import assert_greedy_matches, make_tiny_model, random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.platform import AttentionSpec, Device
from octavo_plugin_kit import reference
from octavo_plugin_kit.inputs import make_forward_batch

NEW_TOKENS = 10
LAYERS = 2
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1}


def _config(arch: str):
    from transformers import DeepseekV2Config, DeepseekV3Config

    common = dict(
        vocab_size=len(smollm2_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        first_k_dense_replace=1,  # a dense layer, then experts
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=24,  # != qk_nope_head_dim: W_UK and W_UV have different shapes
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if arch == "deepseek-v2-lite":  # q in one projection, plain rope
        rope = {"rope_type": "default", "rope_theta": 1e4}
        return DeepseekV2Config(**common, q_lora_rank=None, rope_parameters=rope, n_shared_experts=2)
    if arch == "deepseek-v2":  # q LoRA, YaRN with V2's mscale pair (the softmax scale changes too)
        rope = {**YARN, "rope_theta": 1e4, "mscale": 0.707, "mscale_all_dim": 0.707}
        groups = dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5)
        return DeepseekV2Config(**common, q_lora_rank=24, rope_parameters=rope, n_shared_experts=1, **groups)
    if arch == "deepseek-v3":  # q LoRA, interleaved rope (V3's flag), YaRN with mscale 1
        rope = {**YARN, "rope_theta": 1e4, "mscale": 1.0, "mscale_all_dim": 1.0}
        groups = dict(n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, n_shared_experts=1)
        return DeepseekV3Config(**common, q_lora_rank=24, rope_parameters=rope, rope_interleave=True, **groups)
    raise ValueError(arch)


ARCHS = ("deepseek-v2-lite", "deepseek-v2", "deepseek-v3")


@pytest.fixture(scope="module")
def deepseek_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepseek")
    dirs = {arch: make_tiny_model(arch, str(root / arch), _config(arch)) for arch in ARCHS}
    _randomize_correction_bias(dirs["deepseek-v3"])
    return dirs


def _randomize_correction_bias(path: str) -> None:
    """V3's score correction bias is a zero buffer in a fresh model: give it values that change
    which experts win (sigmoid scores lie in (0, 1))."""
    from safetensors.torch import load_file, save_file

    file = f"{path}/model.safetensors"
    tensors = load_file(file)
    g = torch.Generator().manual_seed(0)
    for name in tensors:
        if name.endswith("e_score_correction_bias"):
            tensors[name] = torch.randn(tensors[name].shape, generator=g) * 0.3
    save_file(tensors, file, metadata={"format": "pt"})


def _prompts() -> list[list[int]]:
    """Three prompts sharing a 40-token prefix (hits on blocks of 8), three of their own."""
    vocab = len(smollm2_tokenizer())
    prefix = random_prompts(1, [40], vocab, seed=5)[0]
    shared = [prefix + s for s in random_prompts(3, [3, 9, 20], vocab, seed=6)]
    return shared + random_prompts(3, [1, 60, 100], vocab, seed=7)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_transformers(arch, deepseek_dirs, hf_reference):
    path = deepseek_dirs[arch]
    prompts = _prompts()
    ref = hf_reference(path, prompts, NEW_TOKENS)
    llm = LLM(
        model=path,
        device="cpu",
        dtype="float32",
        max_model_len=256,
        block_size=8,
        kv_cache_memory="4MiB",
        max_num_batched_tokens=16,  # every prompt but the shortest is prefilled in chunks
        enable_prefix_caching=True,
    )
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for round in range(2):  # the second round finds every prompt's full blocks cached
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        for i, (out, want) in enumerate(zip(outs, ref)):
            what = f"{arch} round {round} prompt {i} ({len(prompts[i])} tokens)"
            assert_greedy_matches(path, prompts[i], out.outputs[0].token_ids, want, what)
    assert llm.llm_engine.get_stats().prefix_cache_hits >= 3 * 40


def test_preemption_keeps_outputs(deepseek_dirs, hf_reference):
    path = deepseek_dirs["deepseek-v3"]
    prompts = random_prompts(6, [30, 45, 60], len(smollm2_tokenizer()), seed=11)
    block_size = 8
    need = -(-(60 + NEW_TOKENS) // block_size)  # the longest request alone fits, all six do not
    llm = LLM(model=path, device="cpu", dtype="float32", block_size=block_size, num_gpu_blocks_override=need + 4)
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True),
        use_tqdm=False,
    )
    for i, (out, want) in enumerate(zip(outs, hf_reference(path, prompts, NEW_TOKENS))):
        assert_greedy_matches(path, prompts[i], out.outputs[0].token_ids, want, f"preempted prompt {i}")
    assert llm.llm_engine.get_stats().num_preemptions_total > 0, "the KV budget was meant to force preemption"


def test_kv_bytes_per_token_follow_the_latent_formula(deepseek_dirs, caplog):
    from transformers import AutoConfig

    path = deepseek_dirs["deepseek-v2"]
    cfg = AutoConfig.from_pretrained(path)
    with caplog.at_level(logging.INFO, logger="octavo"):
        llm = LLM(model=path, device="cpu", dtype="bfloat16", block_size=16, kv_cache_memory="1MiB")
    runner = llm.llm_engine.runner
    per_token = runner.kv_cache_bytes_per_block() / 16
    assert per_token == cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2
    assert f"{int(per_token)} bytes a token" in caplog.text  # the start-up log line says it
    # per-head K and V: every head's key (nope + rope features) and value
    per_head_kv = cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    per_head_kv = (per_head_kv + cfg.num_hidden_layers * cfg.num_attention_heads * cfg.v_head_dim) * 2
    assert per_token * 4 < per_head_kv
    # a real shape (DeepSeek-V3: 61 layers, 128 heads) through the back end's own pricing
    spec = AttentionSpec(num_heads=128, num_kv_heads=1, head_dim=512 + 64, scale=0.1, latent_dim=512)
    page = llm.llm_engine.runner.platform.attention.kv_cache_spec(spec, torch.bfloat16, 16).page_bytes
    assert page * 61 / 16 == 61 * 576 * 2 == 70272  # vs 128 x (192 + 128) x 2 x 61 = 4,997,120 per-head


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_latent_attention_equals_the_reference(dtype):
    from octavo_cpu.attention import CpuAttention

    g = torch.Generator().manual_seed(3)
    layer = AttentionSpec(num_heads=8, num_kv_heads=1, head_dim=40, scale=0.2, latent_dim=32)
    q_lens, seq_lens, bs = [1, 37, 1, 16], [9, 37, 300, 50], 8
    num_blocks = sum(-(-s // bs) for s in seq_lens) + 3
    batch = make_forward_batch(seq_lens, q_lens, bs, num_blocks, generator=g)
    cpu = CpuAttention(Device())
    spec = cpu.kv_cache_spec(layer, dtype, bs)
    cache = cpu.allocate(layer, spec, num_blocks)
    ref_cache = torch.zeros(num_blocks, bs, 40)
    # every slot of the context, then the step's queries
    ctx = make_forward_batch(seq_lens, seq_lens, bs, num_blocks, generator=torch.Generator().manual_seed(3))
    entries = torch.randn(sum(seq_lens), 40, generator=g).to(dtype)
    cpu.write_latent(entries, cache, ctx)
    reference.write_latent(entries.float(), ref_cache, ctx.slot_mapping)
    q = torch.randn(sum(q_lens), 8, 40, generator=g).to(dtype)
    got = cpu.attend_latent(q, cache, batch, layer)
    want = reference.attend_latent(q.float(), ref_cache, batch, layer.scale, 32)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
