"""Llama 3.1 / 3.2 JSON tool calls: the whole output is `{"name": ..., "parameters": {...}}`,
several separated by `;`, optionally after `<|python_tag|>` (Llama's chat template asks for
this when tools are given)."""

from __future__ import annotations

from octavo.tool_parsers.base import FunctionCall, ToolParser, call_from_json, decode_json_values

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def start(self, text: str) -> int | None:
        head = text.lstrip()
        if head.startswith(PYTHON_TAG) or head.startswith("{"):
            return len(text) - len(head)
        return None

    def held(self, text: str) -> int:
        head = text.lstrip()
        return len(text) if PYTHON_TAG.startswith(head) else 0  # blank or part of the tag: undecided

    def calls(self, text: str, final: bool) -> list[FunctionCall]:
        text = text.lstrip()
        if text.startswith(PYTHON_TAG):
            text = text[len(PYTHON_TAG) :]
        values, _ = decode_json_values(text)
        out = []
        for v in values:
            call = call_from_json(v)
            if call is None:
                break
            out.append(call)
        return out
