"""octavo-tpu end to end on JAX's CPU back end ("tpu-cpu", Pallas interpreted): greedy tokens
against Hugging Face transformers, no compilation after warm-up (and a counter that counts a
missed shape), SPMD tensor parallelism over two host devices, sampling on the device with
core's semantics, and what the device does not sample going to core's sampler."""

from __future__ import annotations

import jax
import pytest
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.platform import StaticShapes

NEW_TOKENS = 10
# every token bucket (16, 64, 256); 14 + 10 and 60 + 10 cross block boundaries
LENGTHS = [3, 14, 40, 200, 60, 9]
SHORT_LENGTHS = [3, 14, 40, 9]


def _greedy(n: int = NEW_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def _generate(llm, prompts, params=None) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params or _greedy(), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def engines(tiny_model_dirs):
    """One engine per (architecture, context, tensor-parallel size), built on first use."""
    built: dict[tuple, LLM] = {}

    def get(arch: str, max_model_len: int, tp: int = 1) -> LLM:
        key = (arch, max_model_len, tp)
        if key not in built:
            built[key] = LLM(
                model=tiny_model_dirs[arch],
                device="tpu-cpu",
                dtype="float32",
                kv_cache_memory="16MiB",
                max_model_len=max_model_len,
                tensor_parallel_size=tp,
            )
        return built[key]

    yield get
    for llm in built.values():
        llm.llm_engine.shutdown()


@pytest.mark.parametrize(
    ("arch", "max_model_len", "lengths"),
    [("llama", 256, LENGTHS), ("qwen2", 64, SHORT_LENGTHS), ("qwen3", 64, SHORT_LENGTHS)],
)
def test_greedy_matches_transformers_without_recompiles(
    arch, max_model_len, lengths, engines, tiny_model_dirs, hf_reference
):
    llm = engines(arch, max_model_len)
    prompts = random_prompts(len(lengths), lengths, vocab=len(smollm2_tokenizer()), seed=3)
    ours = _generate(llm, prompts)
    ref = hf_reference(tiny_model_dirs[arch], prompts, NEW_TOKENS)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): octavo {a} != transformers {b}"
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_smollm2_greedy_matches_transformers(smollm2_source, hf_reference):
    # one step shape (16 tokens of one request): 30 layers compile slowly; prompts are chunked
    llm = LLM(
        model="smollm2",
        device="tpu-cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        max_model_len=64,
        max_num_batched_tokens=16,
        max_num_seqs=1,
    )
    try:
        tok = smollm2_tokenizer()
        prompts = [tok.encode(p) for p in ("The capital of France is", "def fibonacci(n):", "Water boils at")]
        ours = _generate(llm, prompts, _greedy(8))
        ref = hf_reference(smollm2_source.directory, prompts, 8, gguf_file=smollm2_source.gguf_file)
        assert ours == ref
        assert tok.decode(ours[0]).startswith(" Paris")
        assert llm.llm_engine.get_stats().num_recompiles == 0
    finally:
        llm.llm_engine.shutdown()


def test_mixed_workload_compiles_nothing_after_warm_up(engines):
    """Chunked prompts, decodes and prefills in one step, n > 1, every token bucket."""
    llm = engines("llama", 256)
    runner = llm.llm_engine.runner
    warmed = set(runner._executables)
    vocab = len(smollm2_tokenizer())
    for seed, (lengths, params) in enumerate(
        [
            ([5], _greedy(3)),
            ([50], _greedy(20)),  # its decodes cross 64 tokens: block-table bucket 4 -> 16
            ([15, 70, 2], _greedy(6)),
            ([120, 230], SamplingParams(n=2, temperature=0.8, seed=1, max_tokens=6, ignore_eos=True)),
        ]
    ):
        _generate(llm, random_prompts(len(lengths), lengths, vocab, seed=seed), params)
    assert set(runner._executables) == warmed
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_recompile_counter_counts_a_missed_shape(engines):
    llm = engines("qwen2", 64)
    runner = llm.llm_engine.runner
    before = runner.static
    # a token bucket warm-up never compiled: a 20-token prompt now pads to 32
    runner.static = StaticShapes((16, 32, 64), before.request_buckets, before.block_buckets)
    try:
        _generate(llm, [list(range(3, 23))], _greedy(1))
        assert llm.llm_engine.get_stats().num_recompiles == 1
        _generate(llm, [list(range(5, 25))], _greedy(1))  # compiled once, then reused
        assert llm.llm_engine.get_stats().num_recompiles == 1
    finally:
        runner.static = before


def test_tensor_parallel_spmd_matches_transformers(engines, tiny_model_dirs, hf_reference):
    """Two host devices, one process: weights and KV cache sharded, the same tokens."""
    assert len(jax.devices("cpu")) == 2, "conftest asks XLA for two host devices"
    llm = engines("llama", 64, tp=2)
    runner = llm.llm_engine.runner
    assert llm.llm_engine.runner.workers is None  # SPMD: no worker processes
    qkv = next(v for k, v in runner._params.items() if k.endswith("qkv_proj.weight"))
    assert len(qkv.sharding.device_set) == 2 and qkv.addressable_shards[0].data.shape[0] == qkv.shape[0] // 2
    cache = runner.kv_caches[0]
    assert cache.addressable_shards[0].data.shape[1] == cache.shape[1] // 2  # KV heads split
    prompts = random_prompts(4, SHORT_LENGTHS, vocab=len(smollm2_tokenizer()), seed=7)
    assert _generate(llm, prompts) == hf_reference(tiny_model_dirs["llama"], prompts, NEW_TOKENS)
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_seeded_sampling_on_device_follows_core(engines, tiny_model_dirs):
    """Temperature / top-k / top-p / min-p drawn in the compiled step with the uniforms core's
    generators give: the same tokens as core's sampler on the cpu platform."""
    llm = engines("qwen3", 64)
    cpu = LLM(model=tiny_model_dirs["qwen3"], device="cpu", dtype="float32", kv_cache_memory="16MiB", max_model_len=64)
    prompts = random_prompts(3, [5, 30, 12], vocab=len(smollm2_tokenizer()), seed=11)
    for params in (
        SamplingParams(temperature=1.3, seed=5, max_tokens=8, ignore_eos=True),
        SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.01, seed=9, max_tokens=8, ignore_eos=True),
    ):
        assert _generate(llm, prompts, params) == _generate(cpu, prompts, params)
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_what_the_device_does_not_sample_goes_to_cores_sampler(engines, tiny_model_dirs):
    """logprobs and penalties run in core's sampler on the step's logits; prompt_logprobs is
    refused with the reason."""
    llm = engines("qwen3", 64)
    cpu = LLM(model=tiny_model_dirs["qwen3"], device="cpu", dtype="float32", kv_cache_memory="16MiB", max_model_len=64)
    prompts = random_prompts(2, [6, 20], vocab=len(smollm2_tokenizer()), seed=13)
    params = _greedy(6, logprobs=2, repetition_penalty=1.3)
    ours = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    theirs = cpu.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for a, b in zip(ours, theirs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert la.keys() == lb.keys()
            for t in la:
                assert la[t].logprob == pytest.approx(lb[t].logprob, abs=1e-4)
    (refused,) = llm.generate([{"prompt_token_ids": prompts[0]}], _greedy(2, prompt_logprobs=1), use_tqdm=False)
    assert refused.outputs[0].finish_reason == "error"
    assert "prompt_logprobs is not supported on device 'tpu-cpu'" in refused.error
