"""Plain JSON tool calls, the fallback for models without a format of their own: the output is
one `{"name": ..., "arguments" | "parameters": {...}}` object or a JSON list of them (the list
is also what `tool_choice="required"` constrains the output to)."""

from __future__ import annotations

from octavo.tool_parsers.base import FunctionCall, ToolParser, call_from_json, decode_json_values


class JsonToolParser(ToolParser):
    name = "json"

    def start(self, text: str) -> int | None:
        head = text.lstrip()
        return len(text) - len(head) if head[:1] in ("{", "[") else None

    def held(self, text: str) -> int:
        return len(text) if not text.strip() else 0  # blank so far: undecided

    def calls(self, text: str, final: bool) -> list[FunctionCall]:
        text = text.lstrip()
        if text.startswith("["):
            values, _ = decode_json_values(text)
            items = values[0] if values and isinstance(values[0], list) else []
        else:
            items, _ = decode_json_values(text)
        out = []
        for item in items:
            call = call_from_json(item)
            if call is None:
                break
            out.append(call)
        return out
