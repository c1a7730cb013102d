"""Decode graphs (octavo.graph_runner) on the CPU, through a fake platform whose "graph"
records the callable at capture and re-runs it on replay, writing into the captured
output as a real graph would. Checks the padding/slicing logic, that only pure-decode
steps replay, that enforce_eager and platforms without graph support never capture,
and the generic profiling forward."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.graph_runner import GraphRunner, capture_sizes
from octavo.platform import Platform
from octavo_cpu.platform import CpuPlatform

NEW_TOKENS = 12


class _Spy:
    def __init__(self) -> None:
        self.captured: list[int] = []
        self.replayed: list[int] = []
        self.steps: list[tuple[int, int, bool]] = []  # (num_decodes, num_seqs, replayed)


@pytest.fixture
def fake_graphs(monkeypatch):
    spy = _Spy()

    def capture_graph(self, fn):
        out = fn()
        b = out.shape[0]
        spy.captured.append(b)

        def replay():
            spy.replayed.append(b)
            out.copy_(fn())

        return out, replay

    monkeypatch.setattr(CpuPlatform, "graph_capture_supported", lambda self: True)
    monkeypatch.setattr(CpuPlatform, "capture_graph", capture_graph)
    real_run = GraphRunner.run

    def run(self, ids, pos, meta):
        hidden = real_run(self, ids, pos, meta)
        spy.steps.append((meta.num_decodes, meta.num_seqs, hidden is not None))
        return hidden

    monkeypatch.setattr(GraphRunner, "run", run)
    return spy


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


def test_graphs_match_eager(fake_graphs, tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    prompts = _prompts()
    lens = [NEW_TOKENS - i for i in range(8)]  # requests finish one by one: padded batches
    eager = LLM(model=path, device="cpu", dtype="float32", kv_cache_memory="64MiB", max_num_seqs=6, enforce_eager=True)
    assert eager.llm_engine.runner.graph_runner is None and not fake_graphs.captured
    ref = _generate(eager, prompts, lens)

    llm = LLM(
        model=path, device="cpu", dtype="float32", kv_cache_memory="64MiB", max_num_seqs=6, max_num_batched_tokens=64
    )
    gr = llm.llm_engine.runner.graph_runner
    assert gr is not None and gr.sizes == [1, 2, 4, 6]
    assert fake_graphs.captured == [6, 4, 2, 1]  # largest first
    assert _generate(llm, prompts, lens) == ref

    steps = fake_graphs.steps
    assert any(r for _, _, r in steps) and any(not r for _, _, r in steps)
    for nd, n, replayed in steps:
        assert replayed == (nd == n), (nd, n, replayed)  # mixed and prefill steps run eagerly
    # padded replays happened (3 or 5 live requests replay the graph of 4 or 6)
    assert {n for nd, n, r in steps if r} - set(gr.sizes)
    assert set(fake_graphs.replayed) <= set(gr.sizes)


def test_padding_rows_are_harmless(fake_graphs, tiny_model_dirs):
    llm = LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="float32", kv_cache_memory="64MiB", max_num_seqs=8)
    gr = llm.llm_engine.runner.graph_runner
    prompts = _prompts()[:3]
    _generate(llm, prompts, [4, 4, 4])
    assert gr.padded_size(3) == 4 and gr.padded_size(9) is None
    # after a 3-request decode replayed through the size-4 graph, row 3 is padding
    assert fake_graphs.replayed and fake_graphs.replayed[-1] == 4
    assert gr.slot_mapping[3:4].tolist() == [-1] and gr.seq_lens[3:4].tolist() == [1]
    assert int(gr.block_tables.max()) < llm.llm_engine.block_manager.num_blocks
    assert gr.block_tables.shape[1] * llm.llm_engine.config.cache.block_size >= gr.max_model_len


def test_no_graphs_without_platform_support(tiny_model_dirs):
    llm = LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="float32", kv_cache_memory="64MiB")
    assert llm.llm_engine.runner.graph_runner is None
    assert Platform.graph_capture_supported(llm.llm_engine.platform) is False
    with pytest.raises(NotImplementedError):
        Platform.capture_graph(llm.llm_engine.platform, lambda: None)


def test_profile_run(tiny_model_dirs, monkeypatch):
    calls = []
    monkeypatch.setattr(CpuPlatform, "profile_memory", lambda self, fwd: (calls.append(1), fwd()))
    # the budget is longer than max_model_len: the profile splits it into several sequences
    llm = LLM(
        model=tiny_model_dirs["llama"],
        device="cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        max_model_len=96,
        max_num_batched_tokens=200,
        max_num_seqs=4,
    )
    assert calls == [1]
    out = _generate(llm, _prompts()[:2], [3, 3])
    assert [len(o) for o in out] == [3, 3]
    # the default hook does not run the forward
    Platform.profile_memory(llm.llm_engine.platform, lambda: pytest.fail("ran"))
    assert torch.isfinite(llm.llm_engine.runner.kv_caches[0]).all()


def test_warm_up_forwards_store_nothing(tiny_model_dirs, monkeypatch):
    """The start-up warm-up (run by platforms that compile kernels on first use) goes through
    long and short decodes and prefill chunks without touching any request's KV blocks."""
    kw = dict(
        model=tiny_model_dirs["llama"],
        device="cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        max_model_len=256,
        max_num_batched_tokens=96,
        max_num_seqs=8,
    )
    cold = LLM(**kw)
    calls = []
    monkeypatch.setattr(CpuPlatform, "warm_up", lambda self, fwd: (calls.append(1), fwd()))
    warm = LLM(**kw)
    assert calls == [1]
    assert all(int(torch.count_nonzero(kv)) == 0 for kv in warm.llm_engine.runner.kv_caches)
    prompts, lens = _prompts()[:4], [5, 9, 3, 7]
    assert _generate(warm, prompts, lens) == _generate(cold, prompts, lens)
    # the default hook does not run the forwards
    Platform.warm_up(warm.llm_engine.platform, lambda: pytest.fail("ran"))
