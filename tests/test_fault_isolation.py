"""Faults planted in one request's work fail that request alone; a fault in the step loop ends
the server with a non-zero status (issue 31).

Planted faults stand for bugs we have not found yet: a sampler that raises on some request's
parameters, a detokenizer that raises on some token. The requests beside the victim must get
exactly the tokens they get without it, and every KV block must come back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx
import pytest
from served import free_port

from octavo import LLM, SamplingParams
from octavo.detokenizer import IncrementalDetokenizer
from octavo.sampling import Sampler

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The sea is"]
VICTIM = 2  # the request whose work the planted fault breaks
MARK = 777  # the victim's seed: how the planted faults recognize it


def params(i: int) -> SamplingParams:
    # a logit bias on every request so the per-row edits run for all of them, not only the victim
    return SamplingParams(
        temperature=0, max_tokens=12, ignore_eos=True, seed=MARK if i == VICTIM else i, logit_bias={13: 0.5}
    )


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async-scheduling"])
def llm(request):
    llm = LLM(
        model="smollm2", device="cpu", dtype="float32", max_model_len=256, kv_cache_memory="32MiB",
        async_scheduling=request.param,
    )  # fmt: skip
    yield llm
    llm.shutdown()


def run_batch(llm) -> list:
    outs = llm.generate(PROMPTS, [params(i) for i in range(len(PROMPTS))], use_tqdm=False)
    bm = llm.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks, "a failed request's KV blocks leaked"
    assert not llm.llm_engine.has_unfinished_requests()
    return outs


def check_isolated(llm, planted_outs, reference) -> None:
    for i, (out, ref) in enumerate(zip(planted_outs, reference)):
        if i == VICTIM:
            assert out.outputs[0].finish_reason == "error" and out.finished
            assert "planted" in out.error
        else:
            assert out.error is None
            assert out.outputs[0].token_ids == ref.outputs[0].token_ids
            assert out.outputs[0].finish_reason == "length"
    # and the engine serves the victim's request normally once the fault is gone
    assert [o.outputs[0].token_ids for o in run_batch(llm)] == [r.outputs[0].token_ids for r in reference]


def test_a_sampler_fault_fails_only_its_request(llm, monkeypatch):
    reference = run_batch(llm)
    original = Sampler._edit_row

    def planted(self, logits, i, p, ban_eos):
        if p.seed == MARK:
            raise RuntimeError("planted sampler fault")
        return original(self, logits, i, p, ban_eos)

    monkeypatch.setattr(Sampler, "_edit_row", planted)
    outs = run_batch(llm)
    monkeypatch.setattr(Sampler, "_edit_row", original)
    check_isolated(llm, outs, reference)


def test_a_detokenizer_fault_fails_only_its_request(llm, monkeypatch):
    reference = run_batch(llm)
    original = IncrementalDetokenizer.add_token

    def planted(self, token_id):
        if self.params.seed == MARK and len(self.ids) > 8:  # a few tokens in, mid-generation
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "planted detokenizer fault")
        return original(self, token_id)

    monkeypatch.setattr(IncrementalDetokenizer, "add_token", planted)
    outs = run_batch(llm)
    monkeypatch.setattr(IncrementalDetokenizer, "add_token", original)
    check_isolated(llm, outs, reference)


# ---- the engine dies: the server says so and exits non-zero -----------------------------------
PLANT = textwrap.dedent(
    """
    import sys
    import octavo.engine as engine

    step = engine.LLMEngine.step
    add = engine.LLMEngine.add_request

    def add_request(self, request_id, prompt, params, arrival_time=None):
        if params.seed == 4242:  # the trigger request arms the fault
            self.armed = True
        return add(self, request_id, prompt, params, arrival_time)

    def planted_step(self):
        if getattr(self, "armed", False):
            raise RuntimeError("planted fault inside the step loop")
        return step(self)

    engine.LLMEngine.add_request = add_request
    engine.LLMEngine.step = planted_step
    from octavo.entrypoints.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_engine_death_ends_the_server_with_status_1():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    serve = (
        "serve smollm2 --device cpu --dtype float32 --max-model-len 512 --kv-cache-memory 64MiB --disable-access-log"
    )
    cmd = [sys.executable, "-c", PLANT, *serve.split(), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, open(log.name).read()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not healthy"
            time.sleep(0.5)
        body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{base}/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))  # the stream is running
            assert '"text"' in first
            trigger = httpx.post(
                f"{base}/v1/completions",
                json={"model": "smollm2", "prompt": "boom", "max_tokens": 4, "seed": 4242},
                timeout=60,
            )
            rest = [line for line in lines if line]  # the running stream ends with an error, not a hang
        assert trigger.status_code in (500, 503), trigger.text
        assert set(trigger.json()) == {"error"}
        assert any('"error"' in line for line in rest) and rest[-1] == "data: [DONE]", rest[-3:]
        assert proc.wait(60) == 1
        text = open(log.name).read()
        assert "the engine died" in text and "planted fault inside the step loop" in text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.close()
        os.unlink(log.name)
