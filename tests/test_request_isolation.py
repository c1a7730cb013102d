"""One request can never take the server down (issue 31), against the real engine in-process.

The app runs over a real AsyncLLMEngine serving the default model (float32, so greedy text
is reproducible) through httpx's ASGI transport, on one event loop kept for the module. After
every hostile request a fixed greedy request must still return the tokens it returned at the
start, and the KV cache must be empty again once nothing runs.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octavo.async_engine import AsyncLLMEngine
from octavo.engine import LLMEngine
from octavo.engine_args import EngineArgs
from octavo.entrypoints.openai.api_server import ServerSettings, build_app
from octavo.entrypoints.openai.limits import RequestLimits, prompt_byte_bound

MODEL = "smollm2"
VOCAB = 49152  # SmolLM2's vocabulary: ids at or above it are not tokens
GREEDY = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}


class Server:
    """The app on one event loop; `post` runs a request to completion from sync code."""

    def __init__(self, limits: RequestLimits | None = None) -> None:
        args = EngineArgs(model=MODEL, device="cpu", dtype="float32", max_model_len=512, kv_cache_memory="64MiB")
        self.loop = asyncio.new_event_loop()
        self.engine = AsyncLLMEngine(LLMEngine(args))
        self.app = build_app(self.engine, ServerSettings(served_model_names=[MODEL], limits=limits or RequestLimits()))
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t", timeout=120)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, **kw))

    def greedy_tokens(self) -> list[str]:
        r = self.post("/v1/completions", json={**GREEDY, "logprobs": 0})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["logprobs"]["tokens"]

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.engine.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    s.reference = s.greedy_tokens()
    assert "".join(s.reference).startswith(" Paris")
    yield s
    s.close()


def assert_error(resp: httpx.Response, status: int, param: str | None = None, contains: str = "") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if param is not None:
        assert body["error"]["param"] == param, body
    assert contains in body["error"]["message"], body
    return body["error"]


def assert_still_serving(server: Server) -> None:
    assert not server.engine.errored
    assert server.greedy_tokens() == server.reference
    assert server.engine.engine.block_manager.usage() == 0.0


# ---- the reproductions of issue 31, each answered 400 with the engine untouched --------------
CHAT = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
CASES = {
    "logit_bias_over_vocab": ("/v1/completions", {**GREEDY, "logit_bias": {"100000": 1}}, "logit_bias", "100000"),
    "logit_bias_at_vocab": ("/v1/completions", {**GREEDY, "logit_bias": {str(VOCAB): 1}}, "logit_bias", str(VOCAB)),
    "logit_bias_negative": ("/v1/completions", {**GREEDY, "logit_bias": {"-7": 5}}, "logit_bias", "-7"),
    "logit_bias_not_an_id": ("/v1/completions", {**GREEDY, "logit_bias": {"abc": 5}}, "logit_bias", ""),
    "stop_token_ids_over_vocab": ("/v1/completions", {**GREEDY, "stop_token_ids": [VOCAB]}, "stop_token_ids", ""),
    "allowed_token_ids_over_vocab": (
        "/v1/completions",
        {**GREEDY, "allowed_token_ids": [5, 70000]},
        "allowed_token_ids",
        "70000",
    ),
    "allowed_token_ids_empty": ("/v1/completions", {**GREEDY, "allowed_token_ids": []}, "allowed_token_ids", ""),
    "prompt_ids_over_vocab": ("/v1/completions", {**GREEDY, "prompt": [1, 2, VOCAB + 5]}, "prompt", ""),
    "prompt_ids_negative": ("/v1/completions", {**GREEDY, "prompt": [1, -3]}, "prompt", ""),
    "n_huge": ("/v1/completions", {**GREEDY, "n": 10000}, "n", "10000"),
    "best_of_huge": ("/v1/completions", {**GREEDY, "best_of": 5000}, "best_of", "5000"),
    "too_many_stops": ("/v1/completions", {**GREEDY, "stop": [f"s{i}" for i in range(65)]}, "stop", "--max-stop"),
    "too_many_logit_bias": (
        "/v1/completions",
        {**GREEDY, "logit_bias": {str(i): 1 for i in range(1025)}},
        "logit_bias",
        "--max-logit-bias",
    ),
    "unknown_role": ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, None, "role"),
    "unknown_field": ("/v1/completions", {**GREEDY, "guided_json": {"type": "object"}}, "guided_json", "support"),
    # response_format and tools are implemented now (issue 18): what they cannot honour is still a 400
    "json_schema_invalid": (
        "/v1/chat/completions",
        {
            **CHAT,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
        },
        "response_format",
        "JSON schema",
    ),
    "tools_malformed": ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, "tools", ""),
    "tools_auto": (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
        "tool_choice",
        "--enable-auto-tool-choice",
    ),
    "request_chat_template": ("/v1/chat/completions", {**CHAT, "chat_template": "{{ 1 }}"}, "chat_template", ""),
    "top_k_over_int64": ("/v1/completions", {**GREEDY, "top_k": -(2**70)}, "top_k", ""),
    "temperature_inf": ("/v1/completions", {**GREEDY, "temperature": math.inf}, "temperature", ""),
    "top_p_nan": ("/v1/completions", {**GREEDY, "top_p": math.nan}, "top_p", ""),
    "repetition_penalty_inf": ("/v1/completions", {**GREEDY, "repetition_penalty": math.inf}, None, ""),
    "logprobs_over_limit": ("/v1/completions", {**GREEDY, "logprobs": 21}, "logprobs", ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_field_is_400_and_the_engine_serves_on(server, case):
    path, body, param, contains = CASES[case]
    # allow_nan: Python's json writes NaN / Infinity, as a careless client would
    r = server.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert_error(r, 400, param, contains)
    assert_still_serving(server)


def test_prompt_over_the_byte_bound_is_refused_before_tokenization(server, monkeypatch):
    from octavo.entrypoints.openai import serving_engine

    calls = []
    original = serving_engine.OpenAIServing.encode
    monkeypatch.setattr(serving_engine.OpenAIServing, "encode", lambda self, *a: calls.append(1) or original(self, *a))
    bound = prompt_byte_bound(server.engine.tokenizer, 512)  # the default: max_model_len is 512
    assert 512 * 4 < bound < 16 << 20
    err = assert_error(server.post("/v1/completions", json={**GREEDY, "prompt": "a" * (bound + 1)}), 400, "prompt")
    assert err["code"] == "context_length_exceeded" and "bytes" in err["message"]
    assert_error(server.post("/tokenize", json={"model": MODEL, "prompt": "ab " * bound}), 400, "prompt")
    messages = [{"role": "user", "content": "x" * (bound // 2 + 1)}] * 2
    assert_error(server.post("/v1/chat/completions", json={**CHAT, "messages": messages}), 400, "messages")
    assert calls == []  # none of them was tokenized
    assert_still_serving(server)


def test_body_over_the_limit_is_413(server):
    big = {**GREEDY, "prompt": "a" * (17 << 20)}  # the 20 MB prompt is over the 16 MiB default
    err = assert_error(server.post("/v1/completions", json=big), 413)
    assert err["code"] == "request_too_large" and "--max-request-body-bytes" in err["message"]

    async def chunked():  # no Content-Length: counted while read
        for _ in range(17):
            yield b"x" * (1 << 20)

    assert_error(server.post("/v1/completions", content=chunked()), 413)
    assert_still_serving(server)


def test_limits_are_configurable():
    s = Server(RequestLimits(max_n=2, max_stop=1, max_body_bytes=4096, max_prompt_bytes=100))
    try:
        assert_error(s.post("/v1/completions", json={**GREEDY, "n": 3}), 400, "n", "(2; see --max-n)")
        assert s.post("/v1/completions", json={**GREEDY, "n": 2}).status_code == 200
        assert_error(s.post("/v1/completions", json={**GREEDY, "stop": ["a", "b"]}), 400, "stop")
        assert_error(s.post("/v1/completions", json={**GREEDY, "prompt": "z" * 101}), 400, "prompt")
        assert_error(s.post("/v1/completions", json={**GREEDY, "prompt": [1] * 4000}), 413)
    finally:
        s.close()


# ---- property: random sampling fields, in and out of range ----------------------------------
def _floats(lo: float, hi: float):
    return st.one_of(
        st.floats(lo, hi),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([lo - 1, hi + 1, 0.0, -0.0]),
    )


_ids = st.one_of(st.integers(0, VOCAB - 1), st.integers(-(2**70), 2**70), st.sampled_from([VOCAB, -1]))
FIELDS = {
    "temperature": _floats(0, 2),
    "top_p": _floats(0, 1),
    "top_k": st.one_of(st.integers(-2, 100), st.integers(-(2**70), 2**70)),
    "min_p": _floats(0, 1),
    "presence_penalty": _floats(-2, 2),
    "frequency_penalty": _floats(-2, 2),
    "repetition_penalty": _floats(0.5, 2),
    "seed": st.one_of(st.none(), st.integers(-(2**70), 2**70)),
    "n": st.integers(-1, 4),
    "best_of": st.one_of(st.none(), st.integers(-1, 5)),
    "max_tokens": st.one_of(st.none(), st.integers(-2, 4), st.integers(10**6, 10**20)),
    "min_tokens": st.integers(-1, 5),
    "logprobs": st.one_of(st.none(), st.integers(-1, 22)),
    "prompt_logprobs": st.one_of(st.none(), st.integers(-1, 22)),
    "echo": st.booleans(),
    "stop": st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    "stop_token_ids": st.one_of(st.none(), st.lists(_ids, max_size=3)),
    "allowed_token_ids": st.one_of(st.none(), st.lists(_ids, max_size=3)),
    "logit_bias": st.one_of(
        st.none(),
        st.dictionaries(st.one_of(_ids.map(str), st.text(max_size=3)), _floats(-100, 100), max_size=3),
    ),
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "use_beam_search": st.booleans(),
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.fixed_dictionaries({}, optional=FIELDS), st.booleans())
def test_random_sampling_fields_never_break_the_engine(server, fields, stream):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, **fields, "stream": stream}
    r = server.post(
        "/v1/completions", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    if r.status_code != 200:
        assert_error(r, 400)  # the client's mistake, named; never a 5xx
    elif stream:
        assert r.text.rstrip().endswith("data: [DONE]")
        assert '"error"' not in r.text, r.text
    assert_still_serving(server)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(min_size=1, max_size=200) | st.text(alphabet=" \n\t", min_size=1, max_size=500))
def test_the_byte_bound_never_refuses_text_that_fits(server, text):
    # the bound's premise: no token stands for more bytes of text than its vocabulary entry has
    tok = server.engine.tokenizer
    per_token = prompt_byte_bound(tok, 1)
    assert len(text.encode("utf-8")) <= per_token * len(tok.encode(text, add_special_tokens=False))
