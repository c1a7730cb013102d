"""Hermes / Qwen tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
block per call, after any content (Qwen2.5 and Qwen3's chat templates ask for this format)."""

from __future__ import annotations

import json

from octavo.tool_parsers.base import FunctionCall, ToolParser, call_from_json

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = (OPEN,)

    def calls(self, text: str, final: bool) -> list[FunctionCall]:
        out = []
        for block in text.split(OPEN)[1:]:
            body, closed, _ = block.partition(CLOSE)
            if not closed and not final:
                break  # still being written
            try:
                call = call_from_json(json.loads(body))
            except json.JSONDecodeError:
                break
            if call is None:
                break
            out.append(call)
        return out
