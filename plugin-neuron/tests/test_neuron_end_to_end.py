"""octavo-neuron end to end on the test-only "neuron-cpu" switch (the Neuron platform's runner,
buckets and sampler, compiled by torch.compile's aot_eager back end): greedy tokens against
transformers, no compilation after warm-up (and the counter seeing one when a shape is missed),
the top-k limit's refusal, and sampling on and off the device against core's sampler."""

from __future__ import annotations

import pytest
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.platform import StaticShapes
from octavo_neuron.sampler import TOP_K_LIMIT
from octavo_neuron.testing import SHAPES

NEW_TOKENS = 12
MAX_MODEL_LEN = 64
# every token bucket (8, 32, 256); 14 + 12 and 40 + 12 cross a block of 32; 50 + 12 crosses Mistral's window of 48
LENGTHS = [3, 14, 40, 50, 9]

pytestmark = pytest.mark.usefixtures("one_thread")


def _greedy(n: int = NEW_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def _generate(llm, prompts, params=None):
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params or _greedy(), use_tqdm=False)


def _tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def _prompts(lengths, seed=3):
    return random_prompts(len(lengths), lengths, vocab=len(smollm2_tokenizer()), seed=seed)


@pytest.fixture(scope="module")
def engines(neuron_cpu, tiny_model_dirs):
    """One engine per (device, architecture), its buckets compiled on first use. Llama takes 4
    requests a step (6 programs: tokens 8/32/256 x requests 1/4), the others one (3 programs):
    their checks are the model's math, Llama's the batching."""
    built: dict[tuple[str, str], LLM] = {}

    def get(arch: str, device: str = neuron_cpu) -> LLM:
        if (device, arch) not in built:
            built[device, arch] = LLM(
                model=tiny_model_dirs[arch],
                device=device,
                dtype="float32",
                kv_cache_memory="16MiB",
                max_model_len=MAX_MODEL_LEN,
                max_num_seqs=4 if arch == "llama" else 1,
            )
        return built[device, arch]

    return get


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_greedy_matches_transformers_without_recompiles(arch, engines, tiny_model_dirs, hf_reference):
    llm = engines(arch)
    prompts = _prompts(LENGTHS)
    ours = _tokens(_generate(llm, prompts))
    ref = hf_reference(tiny_model_dirs[arch], prompts, NEW_TOKENS)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): octavo {a} != transformers {b}"
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_mixed_steps_reach_every_bucket_and_compile_nothing_after_warm_up(engines):
    llm = engines("llama")
    runner = llm.llm_engine.runner
    seen = set()
    prepare = runner._prepare

    def spy(out, rows):
        batch, last = prepare(out, rows)
        seen.add((len(batch.slot_mapping), batch.num_reqs))
        return batch, last

    runner._prepare = spy
    try:
        for seed, lengths in enumerate([[5], [30, 2, 7], [50, 3], [20, 21, 4, 9, 11]]):
            _generate(llm, _prompts(lengths, seed), _greedy(6))
    finally:
        del runner._prepare
    assert {t for t, _ in seen} == set(SHAPES.token_buckets) and {r for _, r in seen} == {1, 4}, seen
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_recompile_counter_counts_a_missed_shape(engines):
    llm = engines("llama")
    runner = llm.llm_engine.runner
    _generate(llm, [[5, 6, 7]], _greedy(2))
    assert llm.llm_engine.get_stats().num_recompiles == 0
    # a token bucket warm-up never compiled: a 12-token prompt now pads to 16
    runner.static = StaticShapes((8, 16, 256), SHAPES.request_buckets, SHAPES.block_buckets)
    try:
        _generate(llm, [list(range(3, 15))], _greedy(1))
        assert llm.llm_engine.get_stats().num_recompiles == 1
        _generate(llm, [list(range(5, 17))], _greedy(1))  # compiled once, then reused
        assert llm.llm_engine.get_stats().num_recompiles == 1
    finally:
        runner.static = SHAPES
        runner._compiles_at_start += 1  # the other tests count from here


def test_a_top_k_past_the_limit_is_refused_and_the_rest_of_the_batch_runs(engines, tiny_model_dirs, hf_reference):
    llm = engines("llama")
    prompts = _prompts([7, 20, 11], seed=8)
    too_wide = SamplingParams(temperature=0.8, top_k=TOP_K_LIMIT + 44, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = _generate(llm, prompts, [_greedy(), too_wide, _greedy()])
    refused = outs[1]
    assert refused.outputs[0].finish_reason == "error" and refused.outputs[0].token_ids == []
    assert "top_k=300 exceeds the Neuron device's sampling limit of 256 candidates" in refused.error, refused.error
    ref = hf_reference(tiny_model_dirs["llama"], [prompts[0], prompts[2]], NEW_TOKENS)
    assert _tokens([outs[0], outs[2]]) == ref
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_sampling_on_and_off_the_device_matches_core_sampler(engines):
    """Seeded sampling on the device (top-k, whole vocabulary) and on core's sampler (a
    nucleus without top-k, penalties with logprobs) draws the tokens that core's sampler draws
    on the kit's static-reference platform, the same model and attention in torch; logprobs and
    prompt logprobs are the same too."""
    llm, trusted = engines("llama"), engines("llama", "static-reference")
    params = [
        SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=1, max_tokens=NEW_TOKENS, ignore_eos=True),
        SamplingParams(temperature=1.0, min_p=0.01, seed=2, max_tokens=NEW_TOKENS, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=0.8, seed=3, max_tokens=NEW_TOKENS, ignore_eos=True),
        SamplingParams(
            temperature=0.7,
            repetition_penalty=1.3,
            seed=4,
            logprobs=2,
            prompt_logprobs=1,
            max_tokens=6,
            ignore_eos=True,
        ),
    ]
    prompts = _prompts([9, 30, 4, 16], seed=11)
    ours, want = _generate(llm, prompts, params), _generate(trusted, prompts, params)
    assert _tokens(ours) == _tokens(want)
    lp, want_lp = ours[3].outputs[0].logprobs, want[3].outputs[0].logprobs
    assert len(lp) == 6
    prompt_lp, want_prompt_lp = ours[3].prompt_logprobs, want[3].prompt_logprobs
    assert len(prompt_lp) == len(prompts[3]) and prompt_lp[0] is None
    for got_step, want_step in zip(lp + prompt_lp[1:], want_lp + want_prompt_lp[1:]):
        assert sorted(got_step) == sorted(want_step)
        for token, entry in want_step.items():
            assert got_step[token].logprob == pytest.approx(entry.logprob, abs=1e-4)
    assert llm.llm_engine.get_stats().num_recompiles == 0
