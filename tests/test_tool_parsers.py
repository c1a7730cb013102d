"""Tool-call parsers on recorded outputs in each format, whole and streamed: the streamed
deltas (cut at every chunk size, markers split included) add up to the whole parse."""

from __future__ import annotations

import json

import pytest

from octavo.tool_parsers import TOOL_PARSERS, ToolCallStream, get_tool_parser

WEATHER = {"location": "Paris, France", "unit": "celsius"}
TIME = {"timezone": "Europe/Paris"}

# parser -> [(recorded output, expected content, expected [(name, arguments)])]
RECORDED = {
    "hermes": [
        (
            'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", '
            '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"timezone": '
            '"Europe/Paris"}}\n</tool_call>',
            "Let me check.\n",
            [("get_weather", WEATHER), ("get_time", TIME)],
        ),
        ('<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}', None, [("get_time", TIME)]),
        ("No tools needed: it is 4 < 5.", "No tools needed: it is 4 < 5.", []),
        ("<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
    ],
    "llama3_json": [
        (
            '{"name": "get_weather", "parameters": {"location": "Paris, France", "unit": "celsius"}}; '
            '{"name": "get_time", "parameters": {"timezone": "Europe/Paris"}}',
            None,
            [("get_weather", WEATHER), ("get_time", TIME)],
        ),
        ('<|python_tag|>{"name": "get_time", "parameters": {"timezone": "Europe/Paris"}}', None, [("get_time", TIME)]),
        ("The weather is fine {today}.", "The weather is fine {today}.", []),
    ],
    "mistral": [
        (
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}, '
            '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]',
            None,
            [("get_weather", WEATHER), ("get_time", TIME)],
        ),
        (
            'Sure. [TOOL_CALLS]get_time[ARGS]{"timezone": "Europe/Paris"}',
            "Sure. ",
            [("get_time", TIME)],
        ),
        ("[TOOL_CALLS] oops", "[TOOL_CALLS] oops", []),
    ],
    "json": [
        (
            '[{"name": "get_weather", "parameters": {"location": "Paris, France", "unit": "celsius"}}, '
            '{"name": "get_time", "parameters": {"timezone": "Europe/Paris"}}]',
            None,
            [("get_weather", WEATHER), ("get_time", TIME)],
        ),
        ('  {"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}', None, [("get_time", TIME)]),
        ("Plain answer.", "Plain answer.", []),
    ],
}
CASES = [(name, i) for name, recs in RECORDED.items() for i in range(len(recs))]


def _calls(calls) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("name,i", CASES)
def test_whole_output(name, i):
    text, content, calls = RECORDED[name][i]
    got_content, got_calls = get_tool_parser(name).extract(text)
    assert got_content == content
    assert _calls(got_calls) == calls


@pytest.mark.parametrize("name,i", CASES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_streamed_output_adds_up_to_the_whole(name, i, chunk):
    text, content, calls = RECORDED[name][i]
    stream = ToolCallStream(get_tool_parser(name))
    streamed_content, streamed_calls = "", []
    pieces = [text[k : k + chunk] for k in range(0, len(text), chunk)]
    for k, piece in enumerate(pieces):
        delta, new = stream.feed(piece, final=k == len(pieces) - 1)
        streamed_content += delta
        streamed_calls += new
    assert (streamed_content if streamed_content.strip() else None) == content
    assert _calls(streamed_calls) == calls
    assert len({c.id for c in streamed_calls}) == len(streamed_calls)


def test_a_call_is_streamed_once_it_is_complete():
    """Calls come out as soon as they close, before the output ends (hermes)."""
    text = RECORDED["hermes"][0][0]
    stream = ToolCallStream(get_tool_parser("hermes"))
    first_close = text.index("</tool_call>") + len("</tool_call>")
    _, calls = stream.feed(text[:first_close])
    assert [c.name for c in calls] == ["get_weather"]


def test_unknown_parser_lists_the_known_ones():
    with pytest.raises(ValueError, match="hermes.*json.*llama3_json.*mistral|choose one of"):
        get_tool_parser("nope")
    assert set(TOOL_PARSERS) == {"hermes", "llama3_json", "mistral", "json"}
