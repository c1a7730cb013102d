"""Logprobs equal transformers' log-softmax of the same logits (float32, 1e-4)."""

import pytest
import torch
from tiny_models import _load_hf, random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams


@pytest.fixture(scope="module")
def setup(tiny_model_dirs):
    path = tiny_model_dirs["qwen2"]
    llm = LLM(model=path, device="cpu", dtype="float32", kv_cache_memory="32MiB", max_num_batched_tokens=16)
    return path, llm


@torch.inference_mode()
def _hf_logprobs(path, ids):
    return _load_hf(path, None)(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_sample_and_prompt_logprobs_match_transformers(setup):
    path, llm = setup
    prompts = random_prompts(3, [5, 23, 40], vocab=len(smollm2_tokenizer()), seed=4)
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=6, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    # chunks of 16 tokens: the 40-token prompt's logprobs come from three steps
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        c = out.outputs[0]
        full = prompt + c.token_ids
        ref = _hf_logprobs(path, full)
        # prompt: position i (i >= 1) is predicted by row i - 1
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
        for i in range(1, len(prompt)):
            entry = out.prompt_logprobs[i]
            assert entry[prompt[i]].logprob == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
            top = ref[i - 1].topk(3)
            for tid, v in zip(top.indices.tolist(), top.values.tolist()):
                assert entry[tid].logprob == pytest.approx(v, abs=1e-4)
        # generated: token j is predicted by row len(prompt) + j - 1
        assert len(c.logprobs) == len(c.token_ids)
        total = 0.0
        for j, tok in enumerate(c.token_ids):
            row = ref[len(prompt) + j - 1]
            entry = c.logprobs[j]
            assert entry[tok].logprob == pytest.approx(row[tok].item(), abs=1e-4)
            # the rank counts tokens above the sampled one in Octavo's own logits, which match
            # transformers' to 1e-4: tokens closer than that to it may rank either way
            above_surely, above_maybe = int((row > row[tok] + 1e-4).sum()), int((row > row[tok] - 1e-4).sum())
            assert above_surely + 1 <= entry[tok].rank <= above_maybe, (entry[tok].rank, above_surely, above_maybe)
            top = row.topk(5)
            assert len(entry) in (5, 6)  # the top 5, plus the sampled token when outside them
            for tid, v in zip(top.indices.tolist(), top.values.tolist()):
                assert entry[tid].logprob == pytest.approx(v, abs=1e-4)
            total += row[tok].item()
        assert c.cumulative_logprob == pytest.approx(total, abs=1e-3)
