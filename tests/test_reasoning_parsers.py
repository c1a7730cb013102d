"""Reasoning parsers on recorded outputs, whole and streamed (every chunk size, `</think>` cut
across deltas): the streamed reasoning and content add up to the whole split."""

from __future__ import annotations

import pytest

from octavo.entrypoints.openai.chat_output import ChatOutput
from octavo.reasoning import REASONING_PARSERS, get_reasoning_parser, reasoning_token_ids
from octavo.tool_parsers import get_tool_parser

# parser -> [(recorded output, reasoning_content, content)]
RECORDED = {
    "deepseek_r1": [
        (
            "The user greets me.\nI answer politely.\n</think>\n\nHello! How can I help?",
            "The user greets me.\nI answer politely.\n",
            "\n\nHello! How can I help?",
        ),
        ("<think>Short thought.</think>Answer.", "Short thought.", "Answer."),
        ("Still thinking when max_tokens hit", "Still thinking when max_tokens hit", None),
        ("</think>Only an answer.", None, "Only an answer."),
    ],
    "qwen3": [
        ("<think>\nLet me add 2 and 2.\n</think>\n\n4", "\nLet me add 2 and 2.\n", "\n\n4"),
        ("4, without thinking.", None, "4, without thinking."),
        ("<think>\nA thought cut short", "\nA thought cut short", None),
        ("  <thinking> is not the marker", None, "  <thinking> is not the marker"),
    ],
}
CASES = [(name, i) for name, recs in RECORDED.items() for i in range(len(recs))]


@pytest.mark.parametrize("name,i", CASES)
def test_whole_output(name, i):
    text, reasoning, content = RECORDED[name][i]
    assert get_reasoning_parser(name).extract(text) == (reasoning, content)


@pytest.mark.parametrize("name,i", CASES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000])
def test_streamed_output_adds_up_to_the_whole(name, i, chunk):
    text, reasoning, content = RECORDED[name][i]
    stream = get_reasoning_parser(name)
    output = ChatOutput("none", stream, None).stream()
    pieces = [text[k : k + chunk] for k in range(0, len(text), chunk)]
    got_r, got_c = "", ""
    for k, piece in enumerate(pieces):
        r, c, calls = output.feed(piece, final=k == len(pieces) - 1)
        assert calls == []
        got_r += r or ""
        got_c += c or ""
    assert (got_r or None, got_c or None) == (reasoning, content)


def test_reasoning_then_tool_calls():
    """The answer after `</think>` goes to the tool parser: whole and streamed alike."""
    text = '<think>I need the time.</think>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    out = ChatOutput("auto", get_reasoning_parser("qwen3"), get_tool_parser("hermes"))
    reasoning, content, calls = out.message(text)
    assert reasoning == "I need the time." and content is None
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    stream = out.stream()
    deltas = [stream.feed(ch, final=k == len(text) - 1) for k, ch in enumerate(text)]
    assert "".join(r or "" for r, _, _ in deltas) == reasoning
    streamed = [c for _, _, cs in deltas for c in cs]
    assert [(c["index"], c["function"]["name"]) for c in streamed] == [(0, "get_time")]
    assert out.finish_reason("stop", stream.num_calls) == "tool_calls"


def test_parser_needs_the_end_token_in_the_vocabulary():
    class Tokenizer:
        def get_vocab(self):
            return {"<think>": 5, "</think>": 6}

    assert reasoning_token_ids("qwen3", Tokenizer()) == (5, 6)
    assert reasoning_token_ids(None, Tokenizer()) == (None, None)

    class Plain:
        def get_vocab(self):
            return {"a": 1}

    with pytest.raises(ValueError, match="no '</think>' token"):
        reasoning_token_ids("deepseek_r1", Plain())
    assert set(REASONING_PARSERS) == {"deepseek_r1", "qwen3"}
