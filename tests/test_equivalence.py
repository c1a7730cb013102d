"""Greedy output equals Hugging Face transformers token for token (float32, CPU)."""

from __future__ import annotations

import pytest
from tiny_models import LLAMA_ARCHS, random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams

NEW_TOKENS = 32
# 1 to ~300 tokens; the long ones cross many blocks and Mistral's sliding window
LENGTHS = [1, 5, 17, 64, 100, 160, 250, 300]

TEXT_PROMPTS = [
    "The capital of France is",
    "Hi",
    "Write a short poem about the sea.",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "List three facts about the Moon:\n1.",
    "Translate to French: I would like a cup of coffee, please.",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woodcutter "
    "and his three children. " * 6,
    "Q: What is 12 times 12?\nA:",
]


def _greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def _generate(llm, prompts):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], _greedy(), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_smollm2_gguf_matches_transformers(smollm2_source, hf_reference):
    tok = smollm2_tokenizer()
    prompts = [tok.encode(p) for p in TEXT_PROMPTS]
    assert max(len(p) for p in prompts) > 150 and min(len(p) for p in prompts) <= 2
    llm = LLM(model="smollm2", device="cpu", dtype="float32", max_model_len=1024, kv_cache_memory="512MiB")
    ours = _generate(llm, prompts)
    ref = hf_reference(smollm2_source.directory, prompts, NEW_TOKENS, gguf_file=smollm2_source.gguf_file)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"prompt {i} ({len(prompts[i])} tokens): octavo {a} != transformers {b}"
    # the well-known sanity check from the design notes
    assert tok.decode(ours[0]).startswith(" Paris.")


@pytest.mark.parametrize("arch", LLAMA_ARCHS)  # the others: test_architectures.py
def test_tiny_random_models_match_transformers(arch, tiny_model_dirs, hf_reference):
    path = tiny_model_dirs[arch]
    prompts = random_prompts(8, LENGTHS, vocab=len(smollm2_tokenizer()), seed=1)
    llm = LLM(model=path, device="cpu", dtype="float32", kv_cache_memory="64MiB")
    ours = _generate(llm, prompts)
    ref = hf_reference(path, prompts, NEW_TOKENS)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): octavo {a} != transformers {b}"


@pytest.fixture(scope="module")
def llama_reference(tiny_model_dirs, hf_reference):
    path = tiny_model_dirs["llama"]
    prompts = random_prompts(8, LENGTHS, vocab=len(smollm2_tokenizer()), seed=2)
    return path, prompts, hf_reference(path, prompts, NEW_TOKENS)


@pytest.mark.parametrize("budget", [7, 64, 2048])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_chunked_prefill_and_block_sizes(budget, block_size, llama_reference):
    path, prompts, ref = llama_reference
    llm = LLM(
        model=path,
        device="cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        max_num_batched_tokens=budget,
        block_size=block_size,
    )
    assert _generate(llm, prompts) == ref


@pytest.mark.parametrize("block_size", [8, 16])
def test_preemption_keeps_outputs(block_size, llama_reference):
    path, prompts, ref = llama_reference
    # enough blocks for the longest request alone, far too few for all eight at once
    need = -(-(max(len(p) for p in prompts) + NEW_TOKENS) // block_size)
    llm = LLM(
        model=path,
        device="cpu",
        dtype="float32",
        block_size=block_size,
        num_gpu_blocks_override=need + 4,
        max_model_len=512,
    )
    assert _generate(llm, prompts) == ref
    assert llm.llm_engine.get_stats().num_preemptions_total > 0, "the KV budget was meant to force preemption"
    bm = llm.llm_engine.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks  # nothing leaked
