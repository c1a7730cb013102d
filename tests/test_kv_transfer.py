"""Disaggregated prefill/decode (issue 28): a prefill engine (kv_producer) hands its prompts' KV
to a decode engine (kv_consumer) over ZeroMQ, in one process here (the transport is TCP either way).

The decode engine's tokens must equal one engine's and transformers'; the prompt tokens it
computes are counted against the same prompts on a plain engine; a transfer that fails
recomputes; bad configurations are refused before the model loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from served import octavo_serve
from tiny_models import assert_greedy_matches, hf_greedy, make_tiny_model, random_prompts

from octavo.engine.llm_engine import LLMEngine
from octavo.engine_args import EngineArgs
from octavo.sampling_params import SamplingParams

MAX_TOKENS = 6
BLOCK = 8


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("kv") / "llama"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine(path: str, kv: dict | None = None, prefix_caching: bool = True) -> LLMEngine:
    args = EngineArgs(model=path, device="cpu", dtype="float32", kv_cache_memory="16MiB", block_size=BLOCK)
    args.enable_prefix_caching, args.kv_transfer_config = prefix_caching, kv
    return LLMEngine(args)


def _config(role: str, port: int, **extra) -> dict:
    cfg = {"kv_connector": "OctavoTcpConnector", "kv_role": role, "kv_port": port}
    if extra:
        cfg["kv_connector_extra_config"] = extra
    return cfg


def _run(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], int]:
    """Greedy tokens of each prompt, and the tokens the engine's steps computed."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    done: dict[str, list[int]] = {}
    computed = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        computed += engine.step_tokens
    return [done[f"r{i}"] for i in range(len(prompts))], computed


def _full_blocks(prompt: list[int]) -> int:
    """Prompt tokens in full blocks before the last token: what the decode engine receives."""
    return (len(prompt) - 1) // BLOCK * BLOCK


def test_prefill_then_decode_equals_one_engine_and_transformers(llama):
    prompts = random_prompts(3, [37, 20, 9], 4000, seed=3)
    plain = _engine(llama)
    want, plain_computed = _run(plain, prompts, MAX_TOKENS)
    plain.shutdown()
    port = _port()
    prefill = _engine(llama, _config("kv_producer", port))
    decode = _engine(llama, _config("kv_consumer", port))
    try:
        first, _ = _run(prefill, prompts, 1)  # vLLM's proxy: the prefill instance runs max_tokens=1
        got, computed = _run(decode, prompts, MAX_TOKENS)
        received = sum(_full_blocks(p) for p in prompts)
        assert decode.kv_connector.stats.received_tokens == received
        assert prefill.kv_connector.stats.sent_tokens == received
        assert decode.kv_connector.stats.failed_requests == 0
        # the decode engine computed only each prompt's tail, not the blocks it received
        assert computed == plain_computed - received
        assert decode.get_stats().prefix_cache_hits == received
        decode.block_manager.check_invariants()
    finally:
        prefill.shutdown()
        decode.shutdown()
    assert got == want
    assert [g[:1] for g in got] == first
    for p, g, w in zip(prompts, got, hf_greedy(llama, prompts, MAX_TOKENS)):
        assert_greedy_matches(llama, p, g, w, f"prompt of {len(p)} tokens through prefill + decode")


def test_failed_transfer_recomputes(llama, caplog):
    prompts = random_prompts(2, [30, 25], 4000, seed=5)
    plain = _engine(llama)
    want, plain_computed = _run(plain, prompts, MAX_TOKENS)
    plain.shutdown()
    port = _port()
    # nobody listens: no answer within the timeout
    lonely = _engine(llama, _config("kv_consumer", port, timeout_s=0.3))
    try:
        with caplog.at_level("WARNING", logger="octavo"):
            got, computed = _run(lonely, prompts, MAX_TOKENS)
        assert got == want and computed == plain_computed
        assert lonely.kv_connector.stats.failed_requests == 2
        # the first request waited for the timeout; the second was not sent (transfers paused)
        assert caplog.text.count("its prompt is recomputed") == 1 and "transfers paused" in caplog.text
    finally:
        lonely.shutdown()
    # a producer that never prefilled these prompts: it answers that it has nothing
    prefill = _engine(llama, _config("kv_producer", port))
    decode = _engine(llama, _config("kv_consumer", port))
    try:
        got, computed = _run(decode, prompts, MAX_TOKENS)
        assert got == want and computed == plain_computed
        assert decode.kv_connector.stats.failed_requests == 2
        assert decode.kv_connector.stats.received_tokens == 0
    finally:
        prefill.shutdown()
        decode.shutdown()


@pytest.mark.parametrize(
    ("kv", "message"),
    [
        ({"kv_connector": "NoSuchConnector", "kv_role": "kv_producer"}, "kv_connector='NoSuchConnector'"),
        ({"kv_connector": "OctavoTcpConnector", "kv_role": "kv_prefiller"}, "kv_role='kv_prefiller'"),
        ({"kv_connector": "OctavoTcpConnector", "kv_role": "kv_both"}, "kv_both"),
        ({"kv_connector": "OctavoTcpConnector", "kv_role": "kv_consumer", "kv_port": 0}, "kv_port=0"),
        ({"kv_connector": "OctavoTcpConnector", "kv_role": "kv_consumer", "kv_rank": 1}, "unknown keys"),
        ('{"kv_connector": ', "not JSON"),
    ],
)
def test_bad_config_refused(llama, kv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _engine(llama, kv)


def test_consumer_needs_prefix_caching(llama):
    with pytest.raises(ValueError, match="needs prefix caching"):
        _engine(llama, _config("kv_consumer", _port()), prefix_caching=False)


def test_producer_port_in_use(llama):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ValueError, match="cannot listen"):
            _engine(llama, _config("kv_producer", s.getsockname()[1]))


SERVE = ["--device", "cpu", "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory", "16MiB"]
SERVE += ["--block-size", str(BLOCK), "--served-model-name", "tiny", "--uvicorn-log-level", "warning"]


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"octavo:{name}_total"):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def test_servers_behind_the_proxy(llama):
    """Two `octavo serve` processes (prefill, decode) and the proxy: the client gets one engine's text,
    streamed or not, and the decode server's metrics count the prompt KV it received."""
    prompts = random_prompts(2, [29, 18], 4000, seed=7)
    plain = _engine(llama)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for i, p in enumerate(prompts):
        plain.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    texts: dict[str, str] = {}
    while plain.has_unfinished_requests():
        texts.update({o.request_id: o.outputs[0].text for o in plain.step() if o.finished})
    plain.shutdown()
    want = [texts[f"r{i}"] for i in range(len(prompts))]
    kv_port = _port()
    prefill_cfg = json.dumps(_config("kv_producer", kv_port))
    decode_cfg = json.dumps(_config("kv_consumer", kv_port))
    with (
        octavo_serve(["serve", llama, *SERVE, "--kv-transfer-config", prefill_cfg], timeout=300) as prefill,
        octavo_serve(["serve", llama, *SERVE, "--kv-transfer-config", decode_cfg], timeout=300) as decode,
    ):
        port = _port()
        cmd = [sys.executable, "-m", "octavo.kv_transfer.proxy", "--prefill", prefill.base, "--decode", decode.base]
        proxy = subprocess.Popen([*cmd, "--port", str(port)], env=os.environ.copy())
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.3)
            body = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
            r = httpx.post(f"{base}/v1/completions", json={**body, "prompt": prompts[0]}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == want[0]
            streamed = ""
            with httpx.stream(
                "POST", f"{base}/v1/completions", json={**body, "prompt": prompts[1], "stream": True}, timeout=60
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        streamed += json.loads(line[6:])["choices"][0]["text"]
            assert streamed == want[1]
            received = sum(_full_blocks(p) for p in prompts)
            assert _metric(decode.base, "kv_transfer_received_tokens") == received
            assert _metric(decode.base, "prefix_cache_hits") == received
            assert _metric(decode.base, "kv_transfer_failed_requests") == 0
        finally:
            proxy.terminate()
            proxy.wait(30)
