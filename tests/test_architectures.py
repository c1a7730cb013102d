"""The architectures past the first Llama family equal Hugging Face transformers on tiny random-weight
models (float32): greedy tokens, with prefill in chunks far below the prompts' lengths and with
prefix-cache hits, and the logprobs of those tokens (which see what greedy cannot: Gemma's
final soft-cap and Granite's logits scaling)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from spy_platform import spy_platform
from tiny_models import (
    NEWER_ARCHS,
    _load_hf,
    assert_greedy_matches,
    make_tiny_model,
    random_prompts,
    smollm2_tokenizer,
    tiny_config,
)

from octavo import LLM, SamplingParams
from octavo.models import get_model_class
from octavo.platform import AttentionBackend, AttentionSpec, Device
from octavo_plugin_kit.reference import ReferenceAttention

NEW_TOKENS = 16
#: where each architecture runs (default cpu; its back end soft-caps Gemma 2's scores on a torch path)
DEVICE: dict[str, str] = {}


def _prompts(seed: int) -> list[list[int]]:
    """Three prompts sharing a 40-token prefix (five blocks of 8: hits), and three on their own,
    one token to past the longest sliding window (16) several times over."""
    vocab = len(smollm2_tokenizer())
    prefix = random_prompts(1, [40], vocab, seed=seed)[0]
    shared = [prefix + suffix for suffix in random_prompts(3, [3, 9, 20], vocab, seed=seed + 1)]
    return shared + random_prompts(3, [1, 70, 150], vocab, seed=seed + 2)


def _llm(path: str, arch: str) -> LLM:
    device = DEVICE.get(arch, "cpu")
    if device == "spy":
        spy_platform()
    return LLM(
        model=path,
        device=device,
        dtype="float32",
        max_model_len=256,
        block_size=8,
        kv_cache_memory="16MiB",
        max_num_batched_tokens=16,  # every prompt but the shortest is prefilled in chunks
        enable_prefix_caching=True,
    )


@torch.inference_mode()
def _hf_logprobs(path: str, ids: list[int]) -> torch.Tensor:
    return _load_hf(path, None)(torch.tensor([ids])).logits[0].float().log_softmax(-1)


@pytest.mark.parametrize("arch", NEWER_ARCHS)
def test_greedy_tokens_and_logprobs_match_transformers(arch, tiny_model_dirs, hf_reference):
    path = tiny_model_dirs[arch]
    prompts = _prompts(seed=7)
    ref = hf_reference(path, prompts, NEW_TOKENS)
    llm = _llm(path, arch)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=3)
    for round in range(2):  # the second round finds every prompt's full blocks cached
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        for i, (out, want) in enumerate(zip(outs, ref)):
            what = f"{arch} round {round} prompt {i} ({len(prompts[i])} tokens)"
            assert_greedy_matches(path, prompts[i], out.outputs[0].token_ids, want, what)
    assert llm.llm_engine.get_stats().prefix_cache_hits >= 3 * 40
    assert outs[1].num_cached_tokens > 0
    # the logprobs of the last round's tokens: the logits themselves, soft-caps and scales included
    for prompt, out in zip(prompts[2:4], outs[2:4]):
        c = out.outputs[0]
        rows = _hf_logprobs(path, prompt + c.token_ids)[len(prompt) - 1 : -1]
        for j, (row, entry) in enumerate(zip(rows, c.logprobs)):
            # every token we report has transformers' logprob, and the ranked ones are its top 3
            # up to float ties (Gemma's final soft-cap squeezes the top logits together)
            third = float(row.topk(3).values[-1])
            for tid, lp in entry.items():
                assert lp.logprob == pytest.approx(float(row[tid]), abs=1e-4), (arch, j, tid)
                if lp.rank is not None and lp.rank <= 3:
                    assert float(row[tid]) >= third - 1e-4, (arch, j, tid)


def test_phi3_longrope_switches_to_long_factors_past_the_pretraining_length(tmp_path, hf_reference):
    """Positions from original_max_position_embeddings on rotate by the long factors: prompts
    within it, generating past it, as transformers does (its decode steps there use them)."""
    config = tiny_config("phi3")
    fields = config.to_dict()
    fields["rope_parameters"]["original_max_position_embeddings"] = fields["original_max_position_embeddings"] = 64
    path = make_tiny_model("phi3", str(tmp_path / "phi3-64"), type(config).from_dict(fields))
    prompts = random_prompts(3, [30, 55, 64], vocab=len(smollm2_tokenizer()), seed=3)
    ours = _llm(path, "phi3").generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
        use_tqdm=False,
    )
    assert [o.outputs[0].token_ids for o in ours] == hf_reference(path, prompts, 24)


def test_soft_capping_is_refused_by_back_ends_that_do_not_opt_in():
    capped = AttentionSpec(num_heads=4, num_kv_heads=2, head_dim=16, scale=0.25, logits_soft_cap=50.0)

    class Plain(AttentionBackend):  # a back end written before contract 2.1
        pass

    assert "soft-capping" in (Plain(Device()).supports(capped, torch.float32, 16) or "")
    assert Plain(Device()).supports(dataclasses.replace(capped, logits_soft_cap=None), torch.float32, 16) is None
    assert ReferenceAttention(Device()).supports(capped, torch.float32, 16) is None


def test_gemma2_on_a_back_end_without_soft_capping_is_refused(tiny_model_dirs):
    with pytest.raises(ValueError, match="soft-capping"):
        LLM(
            model=tiny_model_dirs["gemma2"],
            device="static-reference",  # octavo-static's attention: no soft-capping
            dtype="float32",
            max_model_len=256,
            kv_cache_memory="16MiB",
        )


def test_an_unsupported_architecture_lists_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="not supported") as info:
        get_model_class(GPT2Config(architectures=["GPT2LMHeadModel"]))
    for arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "GraniteForCausalLM", "Olmo2ForCausalLM"):
        assert arch in str(info.value)
