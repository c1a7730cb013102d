"""Structured outputs, tool calls and the request fields around them, through the official
`openai` client against the server (in this process, on a real socket) with the default model.

The server runs with --tool-call-parser hermes, --enable-auto-tool-choice and a chat template
that renders tools, tool calls and tool results the Hermes way (SmolLM2's own template ignores
tools). Calls made under tool_choice "required" or a named function are enforced by the
grammar, so their arguments must validate whatever the model samples.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
uvicorn = pytest.importorskip("uvicorn")

from octavo.async_engine import AsyncLLMEngine  # noqa: E402
from octavo.engine import LLMEngine  # noqa: E402
from octavo.engine_args import EngineArgs  # noqa: E402
from octavo.entrypoints.openai.api_server import ServerSettings, build_app  # noqa: E402
from octavo.entrypoints.openai.protocol import ChatMessage  # noqa: E402
from octavo.entrypoints.openai.serving_chat import OpenAIServingChat  # noqa: E402

MODEL = "smollm2"
HERMES_TEMPLATE = """
{%- if tools %}<|im_start|>system
You may call functions. Write each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
                "required": ["zone"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]},
    },
    "required": ["name", "pets", "home"],
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    args = EngineArgs(model=MODEL, device="cpu", dtype="float32", max_model_len=1024, kv_cache_memory="128MiB")
    engine = AsyncLLMEngine(LLMEngine(args))
    settings = ServerSettings(
        served_model_names=[MODEL],
        chat_template=HERMES_TEMPLATE,
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
    )
    app = build_app(engine, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield {"base": f"http://127.0.0.1:{sock.getsockname()[1]}", "engine": engine}
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key="none", max_retries=0, timeout=120)


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server['base']}/v1/chat/completions", json={"model": MODEL, **body}, timeout=120)


def _error(resp: httpx.Response, param: str | None) -> str:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    return err["message"]


# ---- response formats ----------------------------------------------------------------------
def test_response_format_json_schema(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format=fmt, temperature=1.0, n=4, max_tokens=200, seed=1
    )
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_response_format_json_object_streamed(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, max_tokens=200, stream=True, seed=2
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict)


def test_structured_outputs_extra_field_on_both_endpoints(client):
    resp = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=20,
        temperature=1.0,
        extra_body={"structured_outputs": {"choice": ["sunny", "rainy"]}},
    )
    assert resp.choices[0].message.content in ("sunny", "rainy")
    comp = client.completions.create(
        model=MODEL,
        prompt="Code:",
        max_tokens=20,
        temperature=1.0,
        extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{4}"}},
    )
    assert len(comp.choices[0].text) == 8 and comp.choices[0].text[3] == "-"


def test_bad_constraints_are_400_naming_the_field(server):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    assert "JSON schema" in _error(_post(server, {"messages": ASK, "response_format": bad_schema}), "response_format")
    bad_regex = {"structured_outputs": {"regex": "[a-"}}
    assert "regex" in _error(_post(server, {"messages": ASK, **bad_regex}), "structured_outputs")
    assert "unexpected keyword" in _error(
        _post(server, {"messages": ASK, "structured_outputs": {"jsn": {}}}), "structured_outputs"
    )
    both = {"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}}
    _error(_post(server, {"messages": ASK, **both}), "response_format")
    _error(_post(server, {"messages": ASK, "tool_choice": "required"}), "tool_choice")  # no tools
    named = {"type": "function", "function": {"name": "nope"}}
    assert "get_weather" in _error(
        _post(server, {"messages": ASK, "tools": TOOLS, "tool_choice": named}), "tool_choice"
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "low"),
        ("web_search_options", {}),
        ("guided_json", {"type": "object"}),
    ],
)
def test_fields_the_server_does_not_implement_are_400_naming_them(server, field, value):
    msg = _error(_post(server, {"messages": ASK, field: value}), field)
    assert field in msg


# ---- tool calls ------------------------------------------------------------------------------
def _check_call(call: dict) -> None:
    name = call["function"]["name"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    assert call["type"] == "function" and call["id"]


def test_tool_choice_required_always_calls(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0, n=4, max_tokens=200, seed=3
    )
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            _check_call(call.model_dump())


def _gather_stream(stream) -> tuple[list[dict], str | None]:
    """OpenAI's streamed tool_calls deltas put back together, as clients do."""
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for d in choice.delta.tool_calls or ():
            call = calls.setdefault(d.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
            call["id"] = d.id or call["id"]
            call["type"] = d.type or call["type"]
            if d.function is not None:
                call["function"]["name"] += d.function.name or ""
                call["function"]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_named_tool_choice(client, stream):
    named = {"type": "function", "function": {"name": "get_weather"}}
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, temperature=1.0, max_tokens=100, seed=4)
    if stream:
        calls, finish = _gather_stream(client.chat.completions.create(stream=True, **kw))
    else:
        resp = client.chat.completions.create(**kw)
        calls, finish = [c.model_dump() for c in resp.choices[0].message.tool_calls], resp.choices[0].finish_reason
    assert finish == "stop" and [c["function"]["name"] for c in calls] == ["get_weather"]
    _check_call(calls[0])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_auto_tool_choice_parses_the_models_hermes_output(client, stream):
    """The model's output is forced (a one-string choice) into Hermes' format with some
    content before the call: tool_choice "auto" reads it with the server's parser."""
    output = 'Checking.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    kw = dict(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=100, extra_body={"structured_outputs": {"choice": [output]}}
    )
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls, finish = _gather_stream(chunks)
    else:
        resp = client.chat.completions.create(**kw)
        msg = resp.choices[0].message
        content, finish = msg.content, resp.choices[0].finish_reason
        calls = [c.model_dump() for c in msg.tool_calls]
    assert content == "Checking.\n" and finish == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_time", {"zone": "CET"})
    ]


def test_two_turns_with_a_tool_result(client, server):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=100, temperature=0.0
    )
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=16
    )
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # the history as the template rendered it: the call (arguments as an object) and the result
    chat = OpenAIServingChat(server["engine"], [MODEL], chat_template=HERMES_TEMPLATE)
    text = chat.render([ChatMessage(**m) for m in history], tools=TOOLS)
    rendered_call = json.dumps({"name": call.function.name, "arguments": json.loads(call.function.arguments)})
    assert rendered_call in text
    assert '<tool_response>\n{"temperature": 21, "sky": "clear"}\n</tool_response>' in text
    assert '"name": "get_time"' in text  # the tools themselves
