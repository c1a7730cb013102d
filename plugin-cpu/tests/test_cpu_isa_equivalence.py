"""Greedy generation at every ISA level this CPU runs, fp32 and bf16, against Hugging Face
transformers on the same weights (a tiny random Llama: GQA, several KV blocks, prefill chunks
and decode steps). Each level is chosen in-process before the model loads, as OCTAVO_CPU_ISA
does at import, so the weights are packed in that level's layout.

fp32: token for token transformers' greedy, except where transformers itself scores the two
tokens within float32 noise (a tie another summation order may break the other way; the rest
of that prompt then follows another context and is not compared).
bf16: teacher-forced: given octavo's own prefix, octavo's top-5 log-probabilities at each step,
and the token it picks, must be as close to transformers' fp32 arithmetic on the bf16-rounded
weights as transformers' own bf16 arithmetic is (within twice its largest error on the same
tokens): a peer's noise, measured in the test, not a bound fitted to octavo.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import _load_hf, hf_greedy, random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo_cpu import _native

NEW_TOKENS = 10
PROMPTS = random_prompts(3, [2, 40, 150], vocab=len(smollm2_tokenizer()), seed=16)


@pytest.fixture(params=_native.supported_isas() or ["missing"])
def level(request):
    if request.param == "missing":
        pytest.skip("native kernels unavailable")
    saved = _native.isa()
    _native.set_isa(request.param)
    yield request.param
    _native.set_isa(saved)


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    return path, hf_greedy(path, PROMPTS, NEW_TOKENS)


def _generate(path: str, dtype: str, logprobs: int | None = None) -> list:
    llm = LLM(model=path, device="cpu", dtype=dtype, kv_cache_memory="32MiB", max_num_batched_tokens=64)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=logprobs)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0] for o in outs]


def _log_probs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """transformers' log-probabilities of the next token after each prefix prompt + tokens[:i]."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)].log_softmax(-1)


def test_fp32_greedy_matches_transformers(level, llama):
    path, want = llama
    model = _load_hf(path, None)
    for prompt, out, ref in zip(PROMPTS, _generate(path, "float32"), want):
        got = list(out.token_ids)
        k = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
        if k is None:
            continue
        row = _log_probs(model, prompt, ref[: k + 1])[k]
        gap = float(row[ref[k]] - row[got[k]])
        assert gap < 1e-4, f"{level}: token {k} is {got[k]}, transformers' {ref[k]} by {gap:.2e} nats"


def test_bf16_greedy_follows_transformers(level, llama):
    path, _ = llama
    base = _load_hf(path, None)  # shared (cached): copies, since Module.to works in place
    peer = copy.deepcopy(base).to(torch.bfloat16)  # transformers' bf16 arithmetic
    model = copy.deepcopy(base).to(torch.bfloat16).float()  # fp32 on the weights octavo serves
    for prompt, out in zip(PROMPTS, _generate(path, "bfloat16", logprobs=5)):
        got = list(out.token_ids)
        ref, theirs = _log_probs(model, prompt, got), _log_probs(peer, prompt, got)
        steps = [(i, t, lp.logprob) for i, alts in enumerate(out.logprobs) for t, lp in alts.items()]
        noise = max(abs(float(theirs[i, t] - ref[i, t])) for i, t, _ in steps)
        bound = 2 * max(noise, 0.01)
        for i, t, lp in steps:
            err = abs(lp - float(ref[i, t]))
            assert err < bound, (
                f"{level}: step {i}, token {t}: log-prob {lp:.3f}, want {ref[i, t]:.3f} (peer noise {noise:.3f})"
            )
        for i, tok in enumerate(got):
            gap = float(ref[i].max() - ref[i, tok])
            assert gap < bound, (
                f"{level}: step {i} picked {tok}, {gap:.3f} nats below the best (peer noise {noise:.3f})"
            )
