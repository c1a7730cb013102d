"""Schemathesis against the server's own OpenAPI schema (issue 19, part 1).

Every operation the schema lists is called with examples generated from it, valid ones and
ones that break it, with and without the API key, on a real socket (a tiny model on the CPU).
Each answer must be no 5xx, a status and body the schema documents, every error in OpenAI's
shape; afterwards the server still serves and no KV block is in use.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import MODEL, LiveServer

from octavo.entrypoints.openai.limits import RequestLimits

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "sk-fuzz"
EXAMPLES = 30  # per operation and mode with the key: the CI budget (~40 s on 2 cores) bounds it
EXAMPLES_NO_KEY = 4  # without it every answer is the same 401
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
# small bounds so that valid examples finish fast: the schema says what the server refuses
LIMITS = RequestLimits(max_n=2, max_stop=4, max_logit_bias=8, max_body_bytes=64 << 10)


@pytest.fixture(scope="module")
def live(tiny_model_dirs):
    with LiveServer(tiny_model_dirs["llama"], max_model_len=64, api_key=KEY, limits=LIMITS) as server:
        server.sent = Counter()  # (path, status) -> requests
        yield server


@pytest.fixture(scope="module")
def schema(live):
    raw = httpx.get(f"{live.base_url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    return schemathesis.openapi.from_dict(raw)


def _operations():
    # the routes the schema must list (FastAPI's /docs and /redoc are pages, not API)
    return [
        ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"), ("GET", "/health"), ("GET", "/ping"), ("POST", "/ping"),
        ("POST", "/invocations"), ("GET", "/version"), ("GET", "/metrics"), ("POST", "/tokenize"),
        ("POST", "/detokenize"),
    ]  # fmt: skip


def test_the_schema_lists_every_route(schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert set(_operations()) <= listed, set(_operations()) - listed


def assert_openai_error(status: int, content: bytes) -> None:
    if status < 400:
        return
    body = json.loads(content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
@pytest.mark.parametrize("method, path", _operations())
def test_fuzz_operation(live, schema, method, path, mode, with_key):
    op = schema[path][method]
    raw = op.definition.raw
    if mode is GenerationMode.NEGATIVE and not (raw.get("requestBody") or raw.get("parameters")):
        pytest.skip("no input to break")
    headers = {"Authorization": f"Bearer {KEY}"} if with_key else {}

    @settings(
        max_examples=EXAMPLES if with_key else EXAMPLES_NO_KEY,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=op.as_strategy(generation_mode=mode), served=st.booleans())
    def run(case, served):
        # half the valid bodies name the served model, so that some reach the engine (a random
        # name is a 404); the other half, and every invalid body, keep what was generated
        if served and mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
            case.body["model"] = MODEL
        if with_key:
            case.headers = {**(case.headers or {}), **headers}
        response = case.call(base_url=live.base_url, timeout=60)
        live.sent[path, response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=case.headers)
        assert_openai_error(response.status_code, response.content)
        if not with_key and path not in ("/health", "/ping"):
            assert response.status_code == 401

    run()


def test_zz_still_serving_and_no_kv_in_use(live):
    """Last: after every example above, the server answers and holds no KV block."""
    assert sum(live.sent.values()) >= len(_operations()) * 2  # each operation, with and without the key
    # some examples got through to the model, not only refusals
    assert live.sent["/v1/completions", 200] + live.sent["/v1/chat/completions", 200] > 0, live.sent
    live.wait_idle()
    assert live.engine.engine.block_manager.usage() == 0.0
    assert not live.engine.errored
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{live.base_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    print(f"schemathesis: {sum(live.sent.values())} requests: {sorted(live.sent.items())}")
