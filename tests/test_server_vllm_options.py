"""The server options vLLM users pass, over the fake engine: several API keys, CORS, SageMaker's
/ping and /invocations, no FastAPI docs, request logging."""

from __future__ import annotations

import logging

from test_async_engine import FakeEngine
from test_server_app import assert_error, call

from octavo.async_engine import AsyncLLMEngine
from octavo.entrypoints.openai.api_server import ServerSettings, build_app


def app_with(**settings):
    engine = AsyncLLMEngine(FakeEngine(), **settings.pop("engine", {}))
    return build_app(engine, ServerSettings(served_model_names=["fake"], **settings)), engine


def test_any_of_several_api_keys():
    def app():  # one app per call: each call shuts its engine down
        return app_with(api_key=["k1", "k2"])

    body = {"prompt": "hi", "max_tokens": 2}
    for key in ("k1", "k2"):
        assert call("POST", "/v1/completions", app(), key=key, json=body).status_code == 200
    assert_error(call("POST", "/v1/completions", app(), key="k3", json=body), 401)
    assert_error(call("POST", "/v1/completions", app(), key="k1,k2", json=body), 401)  # the list is no key
    for key in ("k3", "k4"):  # a comma list (vLLM's spelling) is as good as a list
        r = call("POST", "/v1/completions", app_with(api_key=["k1,k3", "k4"]), key=key, json=body)
        assert r.status_code == 200
    assert call("GET", "/ping", app(), key=None).status_code == 200  # health checks need no key


def test_cors_answers_preflights_and_marks_responses():
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    r = call("OPTIONS", "/v1/completions", app_with(api_key="k", allowed_origins=["*"]), key=None, headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    # off unless configured: no origin is allowed, a preflight gets no CORS header
    r = call("GET", "/v1/models", app_with(), key=None, headers={"Origin": "https://ui.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = call("OPTIONS", "/v1/completions", app_with(api_key="k"), key=None, headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    only = app_with(allowed_origins=["https://ui.example"])
    r = call("GET", "/v1/models", only, key=None, headers={"Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = call("GET", "/v1/models", app_with(allowed_origins=["https://ui.example"]), key=None, headers={"Origin": "x"})
    assert "access-control-allow-origin" not in r.headers


def test_sagemaker_ping_and_invocations():
    assert call("POST", "/ping", app_with(), key=None).status_code == 200
    r = call("POST", "/invocations", app_with(), key=None, json={"prompt": "hi", "max_tokens": 3})
    assert r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"] == "abc"
    chat = {"messages": [{"role": "user", "content": "yo"}], "max_tokens": 2}
    r = call("POST", "/invocations", app_with(), key=None, json=chat)
    assert r.json()["choices"][0]["message"]["content"] == "ab"
    assert_error(call("POST", "/invocations", app_with(), key=None, json={"x": 1}), 400, contains="messages")
    bad = {"prompt": "hi", "max_tokens": "many"}
    assert_error(call("POST", "/invocations", app_with(), key=None, json=bad), 400, param="max_tokens")


def test_fastapi_docs_can_be_switched_off():
    assert call("GET", "/docs", app_with(), key=None).status_code == 200
    assert call("GET", "/openapi.json", app_with(fastapi_docs=False), key=None).status_code == 404


def test_requests_are_logged_when_asked(caplog):
    app = app_with(engine={"log_requests": True, "max_log_len": 3})
    with caplog.at_level(logging.INFO, logger="octavo.async_engine"):
        r = call("POST", "/v1/completions", app, key=None, json={"prompt": [1, 2, 3, 4, 5], "max_tokens": 1})
    assert r.status_code == 200
    assert any("received request" in m and "[1, 2, 3]" in m and "4, 5" not in m for m in caplog.messages)
