"""The FastAPI app in-process over a fake engine (fast, no model): shapes, errors, auth, 503."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from test_async_engine import FakeEngine

from octavo.async_engine import AsyncLLMEngine
from octavo.entrypoints.openai.api_server import ServerSettings, build_app

KEY = "sk-test"


def make_app(fake: FakeEngine | None = None, api_key: str | None = KEY, max_waiting: int = 64):
    engine = AsyncLLMEngine(fake or FakeEngine(), max_waiting_requests=max_waiting)
    return build_app(engine, ServerSettings(served_model_names=["fake", "alias"], api_key=api_key)), engine


async def _call(app, engine, method: str, path: str, key: str | None = KEY, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, headers=headers, **kw)


def call(method: str, path: str, app_engine=None, **kw) -> httpx.Response:
    app, engine = app_engine or make_app()

    async def main():
        try:
            return await _call(app, engine, method, path, **kw)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def events(resp: httpx.Response) -> list:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(resp: httpx.Response, status: int, *, code=None, param=None, contains: str = "") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert contains in body["error"]["message"]
    return body["error"]


# ---- happy paths --------------------------------------------------------------------------
def test_completion_shape_and_usage():
    r = call("POST", "/v1/completions", json={"model": "fake", "prompt": "hello", "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "fake"
    assert body["choices"] == [
        {"index": 0, "text": "abcd", "logprobs": None, "finish_reason": "length", "stop_reason": None}
    ]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 9


def test_completion_batch_of_prompts_with_n_and_echo():
    r = call(
        "POST",
        "/v1/completions",
        json={"model": "alias", "prompt": [[120, 121], [65, 66, 67]], "max_tokens": 2, "n": 2, "echo": True},
    )
    body = r.json()
    assert r.status_code == 200, body
    assert body["model"] == "alias"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "xyab"), (1, "xybc"), (2, "ABCab"), (3, "ABCbc")]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 8
    r = call("POST", "/v1/completions", json={"model": "fake", "prompt": ["xy", "z"], "max_tokens": 1})
    assert [c["text"] for c in r.json()["choices"]] == ["a", "a"]


def test_completion_stream_with_usage():
    r = call(
        "POST",
        "/v1/completions",
        json={
            "model": "fake",
            "prompt": "hi",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = events(r)
    assert ev[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in ev[:-2]) == "abc"
    assert ev[-3]["choices"][0]["finish_reason"] == "length"
    assert ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == 3


def test_chat_stream_role_first_then_content_deltas():
    body = {"model": "fake", "messages": [{"role": "user", "content": "yo"}], "max_tokens": 3, "stream": True}
    ev = events(call("POST", "/v1/chat/completions", json=body))
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in e["choices"][0]["delta"] for e in ev[1:-1])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1]) == "abc"
    assert ev[-2]["choices"][0]["finish_reason"] == "length" and ev[-1] == "[DONE]"


def test_chat_uses_the_template_and_counts_its_tokens():
    body = {
        "model": "fake",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "max_completion_tokens": 2,
    }
    r = call("POST", "/v1/chat/completions", json=body)
    out = r.json()
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "ab", "tool_calls": []}
    # "<system>s<user>u<assistant>"
    assert out["usage"]["prompt_tokens"] == len("<system>s<user>u<assistant>")


def test_models_tokenize_detokenize_version_health():
    app_engine = make_app()
    app, engine = app_engine

    async def main():
        try:
            models = await _call(app, engine, "GET", "/v1/models")
            tok = await _call(app, engine, "POST", "/tokenize", json={"prompt": "abc"})
            detok = await _call(app, engine, "POST", "/detokenize", json={"tokens": [104, 105]})
            version = await _call(app, engine, "GET", "/version")
            health = await _call(app, engine, "GET", "/health", key=None)
            metrics = await _call(app, engine, "GET", "/metrics")
            return models, tok, detok, version, health, metrics
        finally:
            await engine.shutdown()

    models, tok, detok, version, health, metrics = asyncio.run(main())
    assert [m["id"] for m in models.json()["data"]] == ["fake", "alias"]
    assert models.json()["data"][0]["max_model_len"] == 64
    assert tok.json() == {"count": 3, "max_model_len": 64, "tokens": [97, 98, 99]}
    assert detok.json() == {"prompt": "hi"}
    assert "version" in version.json()
    assert health.status_code == 200
    assert "octavo:num_requests_running" in metrics.text and "octavo:kv_cache_usage_perc" in metrics.text


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b'{"model": "fake", "prompt": ', b"not json", b"[1, 2]"])
def test_malformed_json_is_400(content):
    r = call("POST", "/v1/completions", content=content, headers={"content-type": "application/json"})
    assert_error(r, 400)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "fake", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": "fake", "prompt": {"a": 1}}, "prompt"),
        ({"model": "fake"}, "prompt"),
        ({"model": "fake", "prompt": "x", "temperature": -1}, "temperature"),
        ({"model": "fake", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "fake", "prompt": "x", "n": 0}, "n"),
        ({"model": "fake", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "fake", "prompt": [1000]}, "prompt"),
    ],
)
def test_wrong_types_and_values_are_400(body, param):
    assert_error(call("POST", "/v1/completions", json=body), 400, param=param)


def test_context_overflow_is_400_with_the_numbers():
    r = call("POST", "/v1/completions", json={"model": "fake", "prompt": "x" * 10, "max_tokens": 60})
    err = assert_error(r, 400, code="context_length_exceeded")
    assert "64" in err["message"] and "70" in err["message"] and "10" in err["message"]
    r = call(
        "POST", "/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "x" * 80}]}
    )
    assert_error(r, 400, code="context_length_exceeded", param="messages")


def test_unknown_model_is_404():
    r = call("POST", "/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert_error(r, 404, code="model_not_found", param="model", contains="gpt-9")


def test_api_key_protects_everything_but_health():
    for path in ("/v1/models", "/metrics", "/version"):
        assert_error(call("GET", path, key=None), 401, code="invalid_api_key")
        assert_error(call("GET", path, key="wrong"), 401, code="invalid_api_key")
    assert_error(call("POST", "/v1/completions", key=None, json={"prompt": "x"}), 401)
    assert call("GET", "/health", key=None).status_code == 200
    assert call("GET", "/v1/models", app_engine=make_app(api_key=None), key=None).status_code == 200


def test_unknown_route_is_404_in_openai_shape():
    assert_error(call("GET", "/v1/nothing"), 404)


def test_full_waiting_queue_is_503_and_the_others_finish():
    fake = FakeEngine(max_num_seqs=1, step_delay=0.01, max_model_len=512)
    app, engine = make_app(fake, max_waiting=2)

    async def main():
        try:
            reqs = [
                _call(app, engine, "POST", "/v1/completions", json={"model": "fake", "prompt": "p", "max_tokens": 20})
                for _ in range(8)
            ]
            return await asyncio.gather(*reqs)
        finally:
            await engine.shutdown()

    results = asyncio.run(main())
    codes = sorted(r.status_code for r in results)
    assert 503 in codes and 200 in codes, codes
    for r in results:
        if r.status_code == 503:
            assert_error(r, 503, code="server_overloaded")
        else:
            assert r.json()["choices"][0]["text"] == "abcdefghijklmnopqrst"
