"""Pipeline parallelism over gloo on the CPU: greedy output equals transformers for PP=2 (with
an untied and a tied lm_head, an uneven layer split) and TP=2 x PP=2, steps of different requests
are in flight on the stages at once, aborting requests in flight returns every KV block, a dead
stage is reported instead of waited for, and what pipelines cannot run is refused before any
worker starts."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch.distributed as dist
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.executor import WorkerError
from octavo.pipeline import PipelineStage, stage_of

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

NEW_TOKENS = 12
LENGTHS = [1, 17, 100, 250]


def _llm(path, tp=1, pp=2, **kw):
    return LLM(
        model=path,
        device="cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        **kw,
    )


def _greedy_ids(llm, prompts, new_tokens=NEW_TOKENS):
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _prompts(seed):
    return random_prompts(4, LENGTHS, vocab=len(smollm2_tokenizer()), seed=seed)


def test_stage_layout():
    # rank 0 (the engine's process, which samples) holds the last stage; neighbours share a tp index
    assert [stage_of(r, 2, 2) for r in range(4)] == [
        PipelineStage(1, 2, prev_rank=2, next_rank=None),
        PipelineStage(1, 2, prev_rank=3, next_rank=None),
        PipelineStage(0, 2, prev_rank=None, next_rank=0),
        PipelineStage(0, 2, prev_rank=None, next_rank=1),
    ]
    middle = stage_of(1, 1, 3)
    assert (middle.rank, middle.prev_rank, middle.next_rank) == (1, 2, 0)
    # earlier stages take the remainder, every layer once
    ranges = [PipelineStage(r, 3).layer_range(8) for r in range(3)]
    assert ranges == [range(0, 3), range(3, 6), range(6, 8)]


@pytest.fixture(scope="module")
def pp2_llama(tiny_model_dirs):
    """One engine for the tests up to test_dead_stage_raises_clear_error, which stops it (a
    process runs one multi-rank engine at a time)."""
    llm = _llm(tiny_model_dirs["llama"])
    yield llm
    llm.shutdown()


def test_pp2_matches_transformers_with_a_step_per_stage(pp2_llama, tiny_model_dirs, hf_reference):
    """llama: untied lm_head on the last stage, embedding on the first; two steps in flight."""
    engine = pp2_llama.llm_engine
    runner = engine.runner
    assert runner.stage == PipelineStage(1, 2, prev_rank=1, next_rank=None)
    assert runner.model.embed_tokens is None and len(runner.model.layers) == 1  # the last of 2 layers only
    in_flight = []
    launch = runner.launch

    def counting_launch(*args, **kwargs):
        step = launch(*args, **kwargs)
        in_flight.append(len(engine._pipelined) + 1)
        return step

    prompts = _prompts(3)
    runner.launch = counting_launch
    try:
        got = _greedy_ids(pp2_llama, prompts)
    finally:
        del runner.launch
    assert got == hf_reference(tiny_model_dirs["llama"], prompts, NEW_TOKENS)
    assert max(in_flight) == 2, f"never a step per stage in flight: {in_flight}"


def test_abort_in_flight_returns_every_block(pp2_llama):
    """Requests aborted while their steps are in flight on the stages free all their blocks
    (one block table, the engine's, indexes every stage's cache), and the engine goes on."""
    engine = pp2_llama.llm_engine
    bm = engine.block_manager
    free = bm.num_free_blocks
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    ids = [f"abort-{i}" for i in range(4)]
    for rid, prompt in zip(ids, _prompts(5)):
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    for _ in range(5):
        engine.step()
    # after each step one step is still in flight (a step's return waited for the other)
    ((in_flight, _),) = engine._pipelined
    assert {s.request_id for s in in_flight.scheduled} <= set(ids) and bm.num_free_blocks < free
    engine.abort_request(ids)
    while engine.has_unfinished_requests() or engine._pipelined:
        engine.step()
    assert bm.num_free_blocks == free
    assert _greedy_ids(pp2_llama, [[5, 6, 7]], 3)  # still serving


def test_dead_stage_raises_clear_error(pp2_llama):
    """Runs last in this module: it kills the fixture's worker (the first stage)."""
    (proc,) = pp2_llama.llm_engine.runner.workers._procs
    os.kill(proc.pid, signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 .*killed by signal 9"):
        _greedy_ids(pp2_llama, [[5, 6, 7]])
    assert time.monotonic() - t < 30, "a dead stage must be reported, not waited for"
    with pytest.raises(WorkerError):  # the engine stays failed
        _greedy_ids(pp2_llama, [[5, 6, 7]])
    pp2_llama.shutdown()
    assert not dist.is_initialized()


def test_pp2_gemma3_matches_transformers(tiny_model_dirs, hf_reference):
    """3 layers split 2 + 1, sliding and global layers with their own rotary tables, and a
    tied lm_head (the last stage keeps the embedding for it)."""
    path = tiny_model_dirs["gemma3"]
    prompts = _prompts(4)
    llm = _llm(path)
    try:
        runner = llm.llm_engine.runner
        # the first stage (2 layers) pays twice rank 0's price (1 layer) per block: blocks are sized by it
        own = sum(spec.page_bytes for spec in runner._kv_specs())
        assert len(runner.model.layers) == 1 and runner.kv_cache_bytes_per_block() == 2 * own
        assert _greedy_ids(llm, prompts) == hf_reference(path, prompts, NEW_TOKENS)
    finally:
        llm.shutdown()


def test_tp2_pp2_matches_transformers(tiny_model_dirs, hf_reference):
    """4 processes: two stages of two tensor-parallel ranks (qwen3: q/k norms, split heads)."""
    path = tiny_model_dirs["qwen3"]
    prompts = [[5, 17, 300, 42, 7]]
    llm = _llm(path, tp=2)
    try:
        assert llm.llm_engine.runner.model.tp_size == 2
        assert _greedy_ids(llm, prompts, 6) == hf_reference(path, prompts, 6)
    finally:
        llm.shutdown()


def test_what_pipelines_cannot_run_is_refused(tiny_model_dirs):
    with pytest.raises(ValueError, match=r"pipeline_parallel_size=3 exceeds the model's 2 layers"):
        _llm(tiny_model_dirs["llama"], pp=3)
    with pytest.raises(ValueError, match="pipeline_parallel_size must be >= 1"):
        _llm(tiny_model_dirs["llama"], pp=0)
    with pytest.raises(ValueError, match="unknown distributed_executor_backend 'uni'"):
        _llm(tiny_model_dirs["llama"], distributed_executor_backend="uni")
    assert not dist.is_initialized()  # refused before any process group or worker
