"""Faults inside the engine (issue 19, part 5), on a tiny model.

- The step loop raising mid-step: requests in flight end with an error in OpenAI's shape (a
  stream with an error event and [DONE]), /health answers 503 and the server is told to exit.
  (tests/test_fault_isolation.py runs `octavo serve` to its exit status 1.)
- A KV budget that cannot hold one request of max_model_len is refused at start-up, with the numbers.
- A request that can never fit the KV cache is refused at once, not preempted forever; requests
  that fit only one at a time all finish, in a bounded number of steps.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from live_server import MODEL, LiveServer

from octavo import SamplingParams
from octavo.engine import LLMEngine
from octavo.engine_args import EngineArgs


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs) -> str:
    return tiny_model_dirs["llama"]


def test_a_fault_in_the_step_loop_fails_requests_in_flight_and_health(tiny):
    with LiveServer(tiny, max_model_len=256) as server:
        inner = server.engine.engine
        step, armed, died = inner.step, threading.Event(), []

        def planted_step():
            if armed.is_set():
                raise RuntimeError("planted fault inside the step loop")
            return step()

        inner.step = planted_step
        server.engine.dead_callbacks.append(died.append)
        base = server.base_url
        assert httpx.get(f"{base}/health").status_code == 200
        long = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True}
        with httpx.Client(base_url=base, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json={**long, "stream": True}) as stream:
                lines = stream.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert '"text"' in first  # running
                armed.set()
                rest = [line for line in lines if line]
            assert any('"error"' in line for line in rest) and rest[-1] == "data: [DONE]", rest[-3:]
            health = client.get("/health")
            assert health.status_code == 503 and set(health.json()) == {"error"}
            after = client.post("/v1/completions", json={**long, "max_tokens": 2})
            assert after.status_code in (500, 503) and set(after.json()["error"]) == {
                "message",
                "type",
                "param",
                "code",
            }
        assert len(died) == 1 and "planted fault" in str(died[0])  # run_server stops serving here, status 1


def test_a_kv_budget_below_one_context_is_refused_at_start_up(tiny):
    with pytest.raises(ValueError) as e:
        LLMEngine(EngineArgs(model=tiny, device="cpu", dtype="float32", max_model_len=1024, kv_cache_memory="64KiB"))
    message = str(e.value)
    assert "fewer than max_model_len=1024" in message and "64KiB" not in message
    assert "65536 bytes" in message  # the budget, and what one block costs
    assert "--kv-cache-memory" in message


def _engine(tiny: str) -> LLMEngine:
    # 8 blocks of 16 tokens = 128 tokens of KV cache, a context of 512: a user's deliberate override
    return LLMEngine(
        EngineArgs(
            model=tiny, device="cpu", dtype="float32", max_model_len=512, block_size=16, num_gpu_blocks_override=8
        )
    )


def test_a_request_that_can_never_fit_is_refused_not_preempted_forever(tiny):
    engine = _engine(tiny)
    with pytest.raises(ValueError, match="needs up to 200 tokens of KV cache but the cache holds 128"):
        engine.add_request("big", {"prompt_token_ids": list(range(5, 105))}, SamplingParams(max_tokens=100))
    assert not engine.has_unfinished_requests()
    # each fits alone (56 tokens, 4 blocks), all four do not: they start (short prompts), then
    # grow into one another and take turns by preemption
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompts = [list(range(10 + i, 26 + i)) for i in range(4)]
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", {"prompt_token_ids": ids}, params)
    done, steps = {}, 0
    while engine.has_unfinished_requests():
        steps += 1
        assert steps < 4 * (16 + 40) * 2, "no progress: the requests preempt one another forever"
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    assert sorted(done) == ["r0", "r1", "r2", "r3"] and all(len(t) == 40 for t in done.values())
    assert engine.get_stats().num_preemptions_total > 0, "the cache was meant to force turns"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    # the last one alone gets the same tokens: taking turns did not change its output
    engine.add_request("solo", {"prompt_token_ids": prompts[-1]}, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.outputs[0].token_ids == done["r3"]
