"""Decode graphs (octavo.graph_runner) on the CPU, through the test platform of spy_platform.py
whose "graph" records the callable at capture and re-runs it on replay, writing into the
captured output as a real graph would. Checks the padding/slicing logic, that only pure-decode
steps replay, that enforce_eager and runners without graphs never capture, the start-up
warm-up hook and the generic profiling forward."""

from __future__ import annotations

import torch
from spy_platform import spy_platform
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.graph_runner import capture_sizes

NEW_TOKENS = 12
KW = dict(device="spy", dtype="float32", kv_cache_memory="64MiB")


def _prompts():
    return random_prompts(8, [1, 5, 17, 40, 64, 9, 30, 3], vocab=len(smollm2_tokenizer()), seed=3)


def _generate(llm, prompts, lens):
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lens]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_capture_sizes():
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    assert capture_sizes(100) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 100]
    s = capture_sizes(1024)
    assert s[-1] == 256 and s == sorted(set(s)) and s[:7] == [1, 2, 4, 8, 16, 24, 32]


def test_graphs_match_eager(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    prompts = _prompts()
    lens = [NEW_TOKENS - i for i in range(8)]  # requests finish one by one: padded batches
    spy = spy_platform(graphs=True)
    eager = LLM(model=path, max_num_seqs=6, enforce_eager=True, **KW)
    assert eager.llm_engine.runner.graph_runner is None and not spy.captured
    ref = _generate(eager, prompts, lens)

    llm = LLM(model=path, max_num_seqs=6, max_num_batched_tokens=64, **KW)
    gr = llm.llm_engine.runner.graph_runner
    assert gr is not None and gr.sizes == [1, 2, 4, 6]
    assert spy.captured == [6, 4, 2, 1]  # largest first
    assert _generate(llm, prompts, lens) == ref

    steps = spy.steps
    assert any(r for _, _, r in steps) and any(not r for _, _, r in steps)
    for decodes, n, replayed in steps:
        assert replayed == decodes, (decodes, n, replayed)  # mixed and prefill steps run eagerly
    # padded replays happened (3 or 5 live requests replay the graph of 4 or 6)
    assert {n for _, n, r in steps if r} - set(gr.sizes)
    assert set(spy.replayed) <= set(gr.sizes)


def test_padding_rows_are_harmless(tiny_model_dirs):
    spy = spy_platform(graphs=True)
    llm = LLM(model=tiny_model_dirs["llama"], max_num_seqs=8, **KW)
    gr = llm.llm_engine.runner.graph_runner
    prompts = _prompts()[:3]
    _generate(llm, prompts, [4, 4, 4])
    assert gr.padded_size(3) == 4 and gr.padded_size(9) is None
    # after a 3-request decode replayed through the size-4 graph, row 3 is padding
    assert spy.replayed and spy.replayed[-1] == 4
    assert gr.slot_mapping[3:4].tolist() == [-1] and gr.seq_lens[3:4].tolist() == [1]
    assert int(gr.block_tables.max()) < llm.llm_engine.block_manager.num_blocks
    assert gr.block_tables.shape[1] * llm.llm_engine.config.cache.block_size >= gr.max_model_len


def test_no_graphs_unless_the_runner_makes_them(tiny_model_dirs):
    spy = spy_platform(graphs=False)
    llm = LLM(model=tiny_model_dirs["llama"], **KW)
    assert llm.llm_engine.runner.graph_runner is None and not spy.captured
    _generate(llm, _prompts()[:2], [3, 3])
    assert not spy.replayed


def test_profile_run(tiny_model_dirs, monkeypatch):
    """The device's KV budget gets a profiling forward to run; the default budget (a fixed
    size) never runs it, a device that profiles does, before the cache exists."""
    from octavo.platform import Device

    spy = spy_platform()
    LLM(model=tiny_model_dirs["llama"], **KW)
    assert spy.profiles == 0  # the default budget does not profile

    def profiling_budget(self, config, profile):
        profile()
        return 64 << 20

    monkeypatch.setattr(Device, "kv_cache_budget_bytes", profiling_budget)
    spy = spy_platform()
    # the budget is longer than max_model_len: the profile splits it into several sequences
    llm = LLM(model=tiny_model_dirs["llama"], max_model_len=96, max_num_batched_tokens=200, max_num_seqs=4, **KW)
    assert spy.profiles == 1
    out = _generate(llm, _prompts()[:2], [3, 3])
    assert [len(o) for o in out] == [3, 3]
    assert torch.isfinite(llm.llm_engine.runner.kv_caches[0]).all()


def test_warm_up_forwards_store_nothing(tiny_model_dirs):
    """The start-up warm-up (runners whose kernels compile on first use) goes through long
    and short decodes and prefill chunks without touching any request's KV blocks."""
    kw = dict(model=tiny_model_dirs["llama"], max_model_len=256, max_num_batched_tokens=96, max_num_seqs=8, **KW)
    spy_platform()
    cold = LLM(**kw)
    batches = [([1, 2], [256, 2]), ([1] * 8 + [5], [1] * 8 + [5]), ([1, 9], [64, 9]), ([1, 64], [64, 64])]
    spy = spy_platform(warm_up_batches=batches)
    warm = LLM(**kw)
    assert spy.warm_ups == 1
    assert all(int(torch.count_nonzero(kv)) == 0 for kv in warm.llm_engine.runner.kv_caches)
    prompts, lens = _prompts()[:4], [5, 9, 3, 7]
    assert _generate(warm, prompts, lens) == _generate(cold, prompts, lens)
