"""`octavo serve` as a subprocess with the default model, driven by the official `openai` client.

One server for the module (start-up dominates): float32 so greedy text is reproducible,
--api-key so auth is exercised on every call. The last test shuts it down with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from served import octavo_serve

openai = pytest.importorskip("openai")

MODEL = "smollm2"
KEY = "sk-octavo-test"
MAX_MODEL_LEN = 2048
STARTUP_TIMEOUT = 300


@pytest.fixture(scope="module")
def server():
    argv = ["serve", MODEL, "--device", "cpu", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN)]
    argv += ["--kv-cache-memory", "512MiB", "--api-key", KEY, "--shutdown-timeout", "30", "--disable-access-log"]
    with octavo_serve(argv, timeout=STARTUP_TIMEOUT) as s:
        yield {"base": s.base, "proc": s.proc, "log": s.log}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer():
    from octavo.loader.source import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(MODEL))


def metrics(server) -> dict[str, float]:
    text = httpx.get(f"{server['base']}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("octavo:"):
            name, value = line.rsplit(" ", 1)
            name = re.sub(r',?(model_name|engine)="[^"]*"', "", name).replace("{,", "{").replace("{}", "")
            out[name] = float(value)
    return out


def post(server, path: str, key: str | None = KEY, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    kw.setdefault("timeout", 60)
    return httpx.post(f"{server['base']}{path}", headers=headers, **kw)


def assert_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---- generation -----------------------------------------------------------------------------
def test_completion(client, tokenizer):
    prompt = "The capital of France is"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].text.startswith(" Paris")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_streamed_deltas_equal_the_full_text(client, tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and text
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert full.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert 0 < full.usage.completion_tokens <= 24

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(deltas) == text
    assert finish == full.choices[0].finish_reason
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


def test_n_choices(client):
    r = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        n=2,
        temperature=0.9,
        seed=1,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 12
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2, temperature=0.9, seed=2
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]


def test_beam_search_over_the_api_equals_offline_beam_search(client):
    from octavo import LLM, BeamSearchParams

    prompt = "The capital of France is"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=5, n=3, extra_body={"use_beam_search": True, "ignore_eos": True}
    )
    llm = LLM(model=MODEL, device="cpu", dtype="float32", max_model_len=MAX_MODEL_LEN, kv_cache_memory="128MiB")
    ref = llm.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True))[0]
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [s.text for s in ref.sequences]
    assert r.usage.completion_tokens == 15


def test_token_id_prompt_and_extra_sampling_fields(client):
    r = client.completions.create(
        model=MODEL,
        prompt=[504, 3575, 282, 4649, 314],
        max_tokens=5,
        temperature=0.7,
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "seed": 3,
            "min_tokens": 5,
            "stop_token_ids": [2],
        },
    )
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 5


def test_32_concurrent_streams_are_batched(server):
    aclient = openai.AsyncOpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0, timeout=300)
    peak = {"running": 0.0}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                peak["running"] = max(peak["running"], metrics(server)["octavo:num_requests_running"])
            except Exception:  # noqa: BLE001 - a missed sample is fine
                pass
            time.sleep(0.05)

    async def one(i: int) -> tuple[str, int]:
        stream = await aclient.completions.create(
            model=MODEL,
            prompt=f"Story number {i}:",
            max_tokens=16,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        )
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            text += "".join(c.text for c in chunk.choices)
        return text, tokens

    async def main():
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await aclient.close()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        results = asyncio.run(main())
    finally:
        stop.set()
        poller.join()
    assert len(results) == 32 and all(tokens == 16 and text for text, tokens in results)
    m = metrics(server)
    assert max(peak["running"], m["octavo:num_requests_running_max"]) > 1
    assert m["octavo:time_to_first_token_seconds_count"] >= 32
    assert m["octavo:generation_tokens_total"] >= 32 * 16


def test_cancelled_streams_free_their_kv_blocks(client, server):
    before = metrics(server)
    streams = []
    for i in range(4):
        s = client.completions.create(
            model=MODEL,
            prompt=f"Count to a thousand, take {i}:",
            max_tokens=1500,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        next(iter(s))
        next(iter(s))
        streams.append(s)
    assert metrics(server)["octavo:kv_cache_usage_perc"] > 0
    for s in streams:
        s.close()  # the client goes away mid-stream
    with pytest.raises(httpx.TimeoutException):  # and one that gives up waiting for a full answer
        post(
            server,
            "/v1/completions",
            json={"model": MODEL, "prompt": "Wait for it", "max_tokens": 1500, "ignore_eos": True},
            timeout=1.0,
        )
    deadline = time.monotonic() + 30
    while True:
        m = metrics(server)
        if m["octavo:kv_cache_usage_perc"] == 0 and m["octavo:num_requests_running"] == 0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    aborted = 'octavo:request_success_total{finished_reason="abort"}'
    assert m[aborted] - before.get(aborted, 0) == 5
    r = client.completions.create(model=MODEL, prompt="Still there?", max_tokens=3)
    assert r.choices[0].text is not None and r.usage.completion_tokens >= 1


# ---- errors -------------------------------------------------------------------------------------
def test_bad_inputs_get_openai_errors_and_the_server_keeps_serving(client, server):
    # a long generation in flight while bad requests arrive
    long = client.completions.create(
        model=MODEL, prompt="The sea", max_tokens=24, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(long))

    assert_error(
        post(
            server,
            "/v1/completions",
            content=b'{"model": "smollm2", "prompt": ',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    err = assert_error(post(server, "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": "ten"}), 400)
    assert err["param"] == "max_tokens"
    assert_error(post(server, "/v1/chat/completions", json={"model": MODEL, "messages": "hello"}), 400)
    err = assert_error(post(server, "/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": -2}), 400)
    assert err["param"] == "temperature"

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hello " * 10, max_tokens=5000)
    msg = e.value.body["message"]
    assert str(MAX_MODEL_LEN) in msg and "5000" in msg and e.value.body["code"] == "context_length_exceeded"

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"

    bad_key = openai.OpenAI(base_url=f"{server['base']}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    assert_error(post(server, "/v1/completions", key=None, json={"model": MODEL, "prompt": "x"}), 401)
    assert_error(httpx.get(f"{server['base']}/metrics"), 401)
    assert httpx.get(f"{server['base']}/health").status_code == 200

    rest = "".join(c.choices[0].text for c in long)
    assert first.choices[0].text + rest and len(first.choices[0].text + rest) > 0
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).usage.completion_tokens >= 1


def test_tokenize_detokenize_version(server, tokenizer):
    tok = post(server, "/tokenize", json={"model": MODEL, "prompt": "Hello world"}).json()
    assert tok["tokens"] == tokenizer.encode("Hello world") and tok["max_model_len"] == MAX_MODEL_LEN
    detok = post(server, "/detokenize", json={"model": MODEL, "tokens": tok["tokens"]}).json()
    assert detok["prompt"] == "Hello world"
    v = httpx.get(f"{server['base']}/version", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert v["version"]


def test_bench_serve_against_the_server(server, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "octavo.entrypoints.cli",
        "bench",
        "serve",
        "--base-url",
        server["base"],
        "--api-key",
        KEY,
        "--num-prompts",
        "6",
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--request-rate",
        "20",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Output token throughput" in proc.stdout and "P99 ITL" in proc.stdout
    report = json.loads(out.read_text())
    assert report["completed"] == 6 and report["failed"] == 0
    assert report["total_input_tokens"] == 6 * 16 and report["total_output_tokens"] == 6 * 4
    assert report["ttft_ms"]["p50"] > 0 and report["tpot_ms"]["p90"] > 0
    assert report["config"]["request_rate"] == 20.0


def test_bench_serve_reads_a_sharegpt_file(server, tokenizer, tmp_path):
    """vLLM's --dataset-name sharegpt: first turns as prompts, second turns' lengths as outputs;
    conversations with one turn, a prompt under 4 tokens or more than 2048 tokens in all are left out."""
    kept = [("Tell me about the sea.", "It is big and blue, and full of fish.")]
    kept += [("Why is the sky blue?", "Because air scatters blue light the most.")]
    kept += [("Write a haiku about autumn leaves falling.", "Red leaves drift and fall / to the quiet ground below.")]
    left_out = [[("Only one turn here, nothing more.",)], [("Hi", "Hello there, how are you?")]]
    left_out += [[("A prompt for a long answer.", "word " * 2100)]]
    data = [
        {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for i, (q, a) in enumerate(kept)
    ]
    for turns in left_out:
        data.append({"id": "x", "conversations": [{"from": f, "value": v} for f, v in zip(("human", "gpt"), *turns)]})
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps(data))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "octavo.entrypoints.cli", "bench", "serve", "--base-url", server["base"]]
    cmd += ["--api-key", KEY, "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--num-prompts", "3"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["completed"] == 3 and report["failed"] == 0
    assert report["total_input_tokens"] == sum(len(tokenizer.encode(q)) for q, _ in kept)
    assert report["total_output_tokens"] == sum(len(tokenizer.encode(a, add_special_tokens=False)) for _, a in kept)
    too_many = subprocess.run([*cmd[:-1], "4"], capture_output=True, text=True, timeout=300)
    assert too_many.returncode == 2 and "3 usable conversations" in too_many.stderr


# ---- last: shutdown --------------------------------------------------------------------------------
def test_zz_sigterm_finishes_requests_in_flight_then_exits(server):
    """Runs last in this module: it stops the shared server."""
    proc = server["proc"]
    body = {
        "model": MODEL,
        "prompt": "Tell me a story.",
        "max_tokens": 32,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    events = []
    with httpx.stream(
        "POST", f"{server['base']}/v1/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if not events:
                proc.send_signal(signal.SIGTERM)
            events.append(line[6:])
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert proc.wait(60) is not None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server['base']}/health", timeout=2)
