"""The engine core in its own process(es) (issue 28, part A): `octavo serve` on a tiny model.

The references are the offline LLM in this process (one process, one engine) for greedy outputs,
and the engine's own counters (KV usage from the core's block manager) for freed blocks. The
engine cores are killed with SIGKILL, as an OOM killer or a crash would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import textwrap
import threading
import time

import httpx
import msgspec
import pytest
import torch
from served import octavo_serve
from tiny_models import make_tiny_model

from octavo.engine import wire
from octavo.engine.core_client import AFFINITY_SLACK, CoreReplica, pick_replica
from octavo.engine.llm_engine import EngineStats
from octavo.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from octavo.sampling_params import SamplingParams

SERVE = ["--device", "cpu", "--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory", "16MiB"]
SERVE += ["--served-model-name", "tiny", "--disable-access-log", "--uvicorn-log-level", "warning"]
# each step slowed by 20 ms, so that a stream of 480 tokens outlives the test's actions on it; the
# engine core is forked from the server's process, so the patch holds there
SLOW_STEPS = textwrap.dedent(
    """
    import sys, time
    import octavo.engine as engine

    step = engine.LLMEngine.step

    def slow_step(self):
        time.sleep(0.02)
        return step(self)

    engine.LLMEngine.step = slow_step
    from octavo.entrypoints.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
# libgomp's threads spin at each barrier for a while; on 2 shared cores, the API server's and
# ZeroMQ's threads waking every step deschedule a spinning partner (docs/cpu.md): spin less
ENV = {**os.environ, "GOMP_SPINCOUNT": "10000"}
PROMPTS = [[5 + i, 17, 300 + 7 * i, 42, 9, 1000 + i] for i in range(16)]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("core-proc") / "llama"))


@pytest.fixture(scope="module")
def reference(model_dir):
    """Greedy outputs of one engine in this process: {prompt index: (text, number of tokens)}."""
    from octavo import LLM

    llm = LLM(model=model_dir, device="cpu", dtype="float32", max_model_len=512, kv_cache_memory="16MiB")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    llm.llm_engine.shutdown()
    return {i: (o.outputs[0].text, len(o.outputs[0].token_ids)) for i, o in enumerate(outs)}


def _complete(base: str, i: int) -> tuple[str, int]:
    body = {"model": "tiny", "prompt": PROMPTS[i], "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"]


def _complete_all(base: str) -> dict[int, tuple[str, int]]:
    """Every prompt at once (so that data-parallel replicas share them)."""
    results: dict[int, tuple[str, int]] = {}

    def one(i: int) -> None:
        results[i] = _complete(base, i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _core_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"engine core (\d+) ready", open(log).read())]


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def _aborted(base: str) -> float:
    """Requests finished with finish_reason "abort" so far."""
    lines = httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("octavo:request_success_total{") and 'finished_reason="abort"' in line
    )


class _LongStream(threading.Thread):
    """A streamed completion of many tokens, recording its events and how it ended."""

    def __init__(self, base: str, prompt: list[int], max_tokens: int = 480) -> None:
        super().__init__(daemon=True)
        self.base, self.prompt, self.max_tokens = base, prompt, max_tokens
        self.lines: list[str] = []
        self.started = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        body = {
            "model": "tiny",
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        try:
            with httpx.stream("POST", f"{self.base}/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            self.failure = e
        self.started.set()

    @property
    def errored(self) -> bool:
        return any('"error"' in line for line in self.lines)


# ---- the wire format -------------------------------------------------------------------------
class _Adapter:
    """Stands for fields other parts of Octavo attach to requests (LoRA requests, images)."""

    def __init__(self, name: str, weights: torch.Tensor) -> None:
        self.name, self.weights = name, weights


def test_a_request_crosses_the_wire_whole_whatever_it_carries():
    codec = wire.Codec()
    params = SamplingParams(temperature=0, max_tokens=3, stop=["x"])
    params.extra_field = _Adapter("a1", torch.arange(4.0))  # a field this module never heard of
    prompt = {"prompt_token_ids": [1, 2, 3], "multi_modal_data": {"image": torch.ones(2, 3)}}
    msg = codec.to_core(codec.encode(wire.Add("r1", wire.pickled(prompt), wire.pickled(params), 1.5)))
    assert isinstance(msg, wire.Add) and msg.request_id == "r1" and msg.arrival_time == 1.5
    assert msg.prompt["prompt_token_ids"] == [1, 2, 3]
    assert torch.equal(msg.prompt["multi_modal_data"]["image"], torch.ones(2, 3))
    assert msg.params.stop == ["x"] and msg.params.max_tokens == 3
    assert msg.params.extra_field.name == "a1" and torch.equal(msg.params.extra_field.weights, torch.arange(4.0))
    out = RequestOutput(
        "r1",
        None,
        [1, 2, 3],
        [CompletionOutput(0, "ab", [7, 8], -0.5, [{7: Logprob(-0.25, 1, "a")}, {8: Logprob(-0.25, 2, "b")}])],
        False,
        metrics=RequestMetrics(1.5, inter_token_latencies=[0.01]),
    )
    stats = EngineStats(1, 2, 0.5, 3, 4, 0, 10, 5)
    back = codec.to_server(codec.encode(wire.Outputs(outputs=[out], stats=stats)))
    assert back.outputs == [out] and back.stats == stats  # the engine's own dataclasses, field for field
    with pytest.raises(msgspec.ValidationError):
        codec.to_core(codec.encode(wire.Ready(num_kv_blocks=3)))  # a server's message is no core's


# ---- balancing -----------------------------------------------------------------------------------
def _replicas(loads: list[int]) -> list[CoreReplica]:
    out = []
    for i, load in enumerate(loads):
        r = CoreReplica(i, f"ipc://r{i}", socket=None, monitor=None)  # type: ignore[arg-type]
        r.stats = EngineStats(0, load, 0.0, 0, 0, 0, 0, 0)
        out.append(r)
    return out


def test_requests_go_to_the_least_loaded_replica_unless_one_holds_their_prefix():
    replicas = _replicas([3, 0, 5])
    short = {"prompt_token_ids": [1, 2, 3]}  # under a block: no prefix to share
    assert pick_replica(replicas, short, 16) is replicas[1]
    replicas[1].unseen_adds = 4  # adds sent since its counters came back count too
    assert pick_replica(replicas, short, 16) is replicas[0]
    long_prompt = {"prompt_token_ids": list(range(100, 150))}
    same = pick_replica(_replicas([0, 0, 0]), long_prompt, 16)
    for loads in ([0, 1, 2], [2, 1, 0], [1, 2, 1]):  # a shared prefix stays where it was while not much busier
        assert pick_replica(_replicas(loads), long_prompt, 16).index == same.index
    busy = [AFFINITY_SLACK + 1 if i == same.index else 0 for i in range(3)]
    assert pick_replica(_replicas(busy), long_prompt, 16).index != same.index


# ---- one engine core process ----------------------------------------------------------------------
def test_engine_core_process_equals_one_process_frees_cancelled_streams_and_its_death_ends_the_server(
    model_dir, reference
):
    with octavo_serve(
        ["serve", model_dir, *SERVE, "--engine-core-process"], env=ENV, timeout=300, code=SLOW_STEPS
    ) as s:
        pids = _core_pids(s.log)
        assert len(pids) == 1 and pids[0] != s.proc.pid  # the engine runs in a process of its own
        assert _complete_all(s.base) == reference  # 16 at once: sends and receives interleave

        # streams cancelled by their clients free every KV block in the core
        before = _aborted(s.base)
        body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 480, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as client, contextlib.ExitStack() as open_streams:
            readers = []  # held: a line iterator dropped closes its response
            for _ in range(3):
                r = open_streams.enter_context(client.stream("POST", f"{s.base}/v1/completions", json=body))
                readers.append(r.iter_lines())
                next(line for line in readers[-1] if line.startswith("data: "))
            assert _metric(s.base, "octavo:kv_cache_usage_perc") > 0
        # the clients went away mid-stream
        deadline = time.monotonic() + 30
        while _metric(s.base, "octavo:kv_cache_usage_perc") != 0 or _metric(s.base, "octavo:num_requests_running"):
            assert time.monotonic() < deadline, "cancelled streams kept their KV blocks"
            time.sleep(0.1)
        assert _aborted(s.base) - before == 3

        # the engine core dies mid-stream: the stream ends with an error, /health fails, exit status 1
        stream = _LongStream(s.base, PROMPTS[1])
        stream.start()
        assert stream.started.wait(60)
        os.kill(pids[0], signal.SIGKILL)
        stream.join(60)
        assert not stream.is_alive(), "the stream hangs after the engine core died"
        assert stream.failure is None and stream.errored and stream.lines[-1] == "data: [DONE]", stream.lines[-3:]
        try:
            assert httpx.get(f"{s.base}/health", timeout=5).status_code == 503
        except httpx.HTTPError:
            pass  # the server has exited already
        assert s.proc.wait(60) == 1
        text = open(s.log).read()
        assert "engine core 0 died" in text and "the engine died" in text


# ---- data parallelism ----------------------------------------------------------------------------
def test_two_data_parallel_replicas_equal_one_process_and_one_survives_the_other(model_dir, reference):
    with octavo_serve(
        ["serve", model_dir, *SERVE, "--data-parallel-size", "2"], env=ENV, timeout=300, code=SLOW_STEPS
    ) as s:
        pids = _core_pids(s.log)
        assert len(pids) == 2
        assert _complete_all(s.base) == reference

        # long streams on both replicas; one replica is killed: its streams fail, the others finish
        streams = [_LongStream(s.base, [3, 4, 5 + i], max_tokens=100) for i in range(4)]
        for st in streams:
            st.start()
            assert st.started.wait(60)
        os.kill(pids[0], signal.SIGKILL)
        for st in streams:
            st.join(180)
            assert not st.is_alive(), "a stream hangs after a replica died"
        failed = [st for st in streams if st.errored]
        assert 0 < len(failed) < len(streams), [st.lines[-2:] for st in streams]
        assert all(st.lines[-1] == "data: [DONE]" for st in streams)
        assert httpx.get(f"{s.base}/health", timeout=5).status_code == 200
        assert _complete_all(s.base) == reference  # the other replica serves everything now
        assert s.proc.poll() is None
