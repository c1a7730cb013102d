"""Tensor parallelism over gloo on the CPU: greedy output equals tp=1 and transformers,
bad sizes are refused before any worker starts, and no worker process outlives its engine."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.executor import WorkerError
from octavo.layers.attention import shard_heads

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

NEW_TOKENS = 16
LENGTHS = [1, 17, 100, 250]


def _greedy_ids(llm, prompts):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _llm(path, tp):
    return LLM(model=path, device="cpu", dtype="float32", kv_cache_memory="64MiB", tensor_parallel_size=tp)


def _worker_pids(llm) -> list[int]:
    return [p.pid for p in llm.llm_engine.runner.workers._procs]


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer runs (reaped, or a zombie nobody waits for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tp2_matches_tp1_and_transformers(arch, tiny_model_dirs, hf_reference):
    """llama: llama3 rope, untied lm_head; qwen2: q/k/v bias, tied embeddings; qwen3: q/k norm."""
    path = tiny_model_dirs[arch]
    prompts = random_prompts(4, LENGTHS, vocab=len(smollm2_tokenizer()), seed=3)
    ref = hf_reference(path, prompts, NEW_TOKENS)
    tp1 = _greedy_ids(_llm(path, 1), prompts)
    llm = _llm(path, 2)
    tp2 = _greedy_ids(llm, prompts)
    assert tp1 == ref, f"{arch}: tp=1 differs from transformers"
    for i, (a, b) in enumerate(zip(tp2, ref)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): tp=2 {a} != transformers {b}"
    # deleting the LLM stops its workers
    pids = _worker_pids(llm)
    del llm
    gc.collect()
    assert all(_gone(p) for p in pids), f"worker processes {pids} outlived the deleted LLM"


def test_tp2_replicates_a_single_kv_head(tmp_path, hf_reference):
    """One kv head (multi-query attention) and two ranks: each rank holds a copy of it."""
    from tiny_models import make_tiny_model, tiny_config

    cfg = tiny_config("qwen2")
    cfg.num_key_value_heads = 1
    path = make_tiny_model("qwen2", str(tmp_path / "mqa"), config=cfg)
    prompts = random_prompts(3, LENGTHS, vocab=len(smollm2_tokenizer()), seed=4)
    llm = _llm(path, 2)
    assert {spec.num_kv_heads for spec in llm.llm_engine.runner.model.attention_specs()} == {1}
    assert _greedy_ids(llm, prompts) == hf_reference(path, prompts, NEW_TOKENS)
    llm.shutdown()


def test_uneven_head_split_is_by_kv_group():
    # SmolLM2: 9 heads, 3 kv heads over 2 ranks -> kv heads {0, 1} with q 0-5, and {2} with q 6-8
    a, b = (shard_heads(9, 3, 2, r) for r in range(2))
    assert (a.q_start, a.num_heads, a.kv_start, a.num_kv_heads) == (0, 6, 0, 2)
    assert (b.q_start, b.num_heads, b.kv_start, b.num_kv_heads) == (6, 3, 2, 1)


def test_indivisible_head_count_is_refused(tiny_model_dirs):
    # 4 heads and 2 kv heads cannot be shared by 3 ranks
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 cannot split .* use one of \[1, 2, 4\]"):
        _llm(tiny_model_dirs["llama"], 3)
    assert not dist.is_initialized()  # refused before any process group or worker
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        _llm(tiny_model_dirs["llama"], 0)


def test_worker_crash_raises_clear_error(tiny_model_dirs):
    llm = _llm(tiny_model_dirs["llama"], 2)
    prompts = [[5, 6, 7]]
    _greedy_ids(llm, prompts)
    (pid,) = _worker_pids(llm)
    os.kill(pid, signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 .*killed by signal 9"):
        _greedy_ids(llm, prompts)
    assert time.monotonic() - t < 30, "a dead worker must be reported, not waited for"
    with pytest.raises(WorkerError):  # the engine stays failed
        _greedy_ids(llm, prompts)
    llm.shutdown()
    assert not dist.is_initialized()
    # a new tensor-parallel engine can start in the same process
    llm = _llm(tiny_model_dirs["llama"], 2)
    assert _greedy_ids(llm, prompts) == _greedy_ids(_llm(tiny_model_dirs["llama"], 1), prompts)
    pids = _worker_pids(llm)
    llm.shutdown()
    assert all(_gone(p) for p in pids)


def test_workers_exit_when_the_engine_process_dies(tiny_model_dirs):
    script = textwrap.dedent(f"""
        import os, signal
        from octavo import LLM
        if __name__ == "__main__":
            llm = LLM(model={tiny_model_dirs["llama"]!r}, device="cpu", dtype="float32",
                      kv_cache_memory="64MiB", tensor_parallel_size=2)
            print(*[p.pid for p in llm.llm_engine.runner.workers._procs], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no atexit, no finalizers
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert pids and all(_gone(p) for p in pids), f"workers {pids} outlived their killed engine process"
