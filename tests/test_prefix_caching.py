"""Automatic prefix caching: same outputs, fewer computed tokens, no leaks."""

import random

import pytest
from tiny_models import smollm2_tokenizer

from octavo import LLM, SamplingParams


def _prompts(prefix_len, n, suffix_len, seed):
    rng = random.Random(seed)
    vocab = len(smollm2_tokenizer())
    prefix = [rng.randrange(3, vocab) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(3, vocab) for _ in range(suffix_len + i % 5)] for i in range(n)]


def _run(llm, prompts, max_tokens=12):
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
        use_tqdm=False,
    )
    return [o.outputs[0].token_ids for o in outs]


def _llm(path, caching, **kw):
    return LLM(model=path, device="cpu", dtype="float32", enable_prefix_caching=caching, **kw)


@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_caching_on_equals_off_with_shared_prefixes(block_size, tiny_model_dirs):
    path = tiny_model_dirs["qwen3"]
    prompts = _prompts(70, 10, 9, seed=block_size)
    kw = dict(block_size=block_size, kv_cache_memory="32MiB", max_num_batched_tokens=64)
    on = _llm(path, True, **kw)
    off = _llm(path, False, **kw)
    # twice: the second round hits blocks cached by the first
    ref = _run(off, prompts)
    assert _run(on, prompts) == ref
    assert _run(on, prompts) == ref
    stats = on.llm_engine.get_stats()
    assert stats.prefix_cache_hits > 0 and off.llm_engine.get_stats().prefix_cache_hits == 0


def test_caching_on_equals_off_under_eviction_pressure(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    groups = [_prompts(40, 4, 6, seed=s) for s in range(4)]  # 4 different shared prefixes
    prompts = [p for g in groups for p in g]
    kw = dict(block_size=8, num_gpu_blocks_override=40, max_model_len=128)
    on = _llm(path, True, **kw)
    off = _llm(path, False, **kw)
    ref = _run(off, prompts)
    for _ in range(2):
        assert _run(on, prompts) == ref
    bm = on.llm_engine.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks  # every block back, none leaked or double-freed


def test_second_request_with_same_500_token_prefix_computes_only_new_tokens(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    llm = _llm(path, True, block_size=16, kv_cache_memory="32MiB")
    first, second = _prompts(500, 2, 20, seed=5)
    _run(llm, [first], max_tokens=2)
    engine = llm.llm_engine
    before = engine.get_stats()
    out = llm.generate([{"prompt_token_ids": second}], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)[0]
    after = engine.get_stats()
    # 500 shared tokens = 31 full blocks of 16 (496 tokens); the rest is computed
    assert out.num_cached_tokens == 496
    assert after.prefix_cache_hits - before.prefix_cache_hits == 496
    assert after.prefix_cache_queries - before.prefix_cache_queries == len(second)


def test_identical_prompts_in_one_batch_share_blocks(tiny_model_dirs):
    llm = _llm(tiny_model_dirs["llama"], True, block_size=16, kv_cache_memory="32MiB")
    prompt = _prompts(100, 1, 0, seed=9)[0]
    outs = llm.generate([{"prompt_token_ids": prompt}] * 4, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
    # the first computes 6 full blocks in the step; the three admitted after it in the same step reuse them
    assert [o.num_cached_tokens for o in outs] == [0, 96, 96, 96]


def test_kv_slot_utilization_counts_only_real_tokens(tiny_model_dirs):
    llm = _llm(tiny_model_dirs["llama"], False, block_size=16, kv_cache_memory="32MiB")
    engine = llm.llm_engine
    for i, n in enumerate([16, 17, 40]):
        engine.add_request(str(i), {"prompt_token_ids": [5] * n}, SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()  # all three prefilled: blocks 1 + 2 + 3 = 6 blocks = 96 slots; each sampled one token
    # each now holds prompt + 1 tokens, counted where a slot exists for them: 16 (the 17th token
    # of the first request gets its block at the next schedule) + 18 + 41 = 75 of 96 slots
    assert engine.get_kv_cache_utilization() == pytest.approx(75 / 96)
    assert engine.get_stats(with_utilization=True).kv_slot_utilization == pytest.approx(75 / 96)
    assert engine.get_stats().kv_slot_utilization is None  # not walked unless asked


def test_n_samples_allocate_the_prompt_blocks_once(tiny_model_dirs):
    llm = _llm(tiny_model_dirs["llama"], True, block_size=16, kv_cache_memory="32MiB")
    engine = llm.llm_engine
    prompt = _prompts(100, 1, 0, seed=12)[0]  # 6 full blocks + 4 tokens
    engine.add_request("r", {"prompt_token_ids": prompt}, SamplingParams(n=4, temperature=1.0, max_tokens=3))
    engine.step()
    bm = engine.block_manager
    # the 6 full prompt blocks once (shared, 4 references each), plus each sample's own last block
    assert bm.num_used_blocks == 6 + 4
    tables = [r.block_ids for r in engine.scheduler.running]
    assert len(tables) == 4 and all(t[:6] == tables[0][:6] for t in tables)
    assert all(bm.ref_counts[b] == 4 for b in tables[0][:6])
    while engine.has_unfinished_requests():
        engine.step()
    assert bm.num_free_blocks == bm.num_blocks
