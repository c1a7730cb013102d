"""The Ray backend: the same worker as the multiprocessing backend, started as a Ray actor in a
placement group on a local Ray instance; greedy output equals transformers, a killed worker
is reported instead of waited for, and the instance the engine started stops with it. One
test: a Ray instance takes seconds to start."""

from __future__ import annotations

import glob
import time

import pytest
import torch.distributed as dist

from octavo import LLM, SamplingParams
from octavo.executor import WorkerError
from octavo.ray_executor import RayWorker

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def _rank_actors() -> list[str]:
    """Processes Ray titles after the worker actor's class (ray::_RankActor...)."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if b"_RankActor" in f.read():
                    found.append(path)
        except OSError:
            pass
    return found


def test_ray_tp2_matches_transformers(tiny_model_dirs, hf_reference):
    assert not ray.is_initialized()
    path = tiny_model_dirs["qwen2"]
    prompts = [[5, 17, 300, 42, 7], [9, 8]]
    llm = LLM(
        model=path,
        device="cpu",
        dtype="float32",
        kv_cache_memory="64MiB",
        tensor_parallel_size=2,
        distributed_executor_backend="ray",
    )
    try:
        assert _rank_actors()
        (worker,) = llm.llm_engine.runner.workers._procs
        assert isinstance(worker, RayWorker) and worker.is_alive()
        assert ray.util.placement_group_table()  # the worker sits in the engine's placement group
        params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outs] == hf_reference(path, prompts, 8)
        # a worker killed under the engine is reported at the next step, not waited for
        ray.kill(worker._actor)
        t = time.monotonic()
        with pytest.raises(WorkerError, match="rank 1"):
            llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)
        assert time.monotonic() - t < 30
    finally:
        llm.shutdown()
    assert not ray.is_initialized(), "the Ray instance this engine started outlived it"
    deadline = time.monotonic() + 10
    while _rank_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _rank_actors(), "a worker actor's process outlived its engine"
    assert not dist.is_initialized()
