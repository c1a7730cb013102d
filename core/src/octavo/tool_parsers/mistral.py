"""Mistral tool calls: `[TOOL_CALLS]` then a JSON list of `{"name": ..., "arguments": {...}}`
(v3 tokenizers), or `[TOOL_CALLS]name[ARGS]{...}` per call (v11+). `[TOOL_CALLS]` is a special
token, so the detokenizer must keep special tokens."""

from __future__ import annotations

import json

from octavo.tool_parsers.base import FunctionCall, ToolParser, call_from_json, decode_json_values

TOOL_CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"


class MistralToolParser(ToolParser):
    name = "mistral"
    markers = (TOOL_CALLS,)

    def skip_special_tokens(self) -> bool | None:
        return False

    def calls(self, text: str, final: bool) -> list[FunctionCall]:
        out: list[FunctionCall] = []
        for block in text.split(TOOL_CALLS)[1:]:
            block = block.lstrip()
            if block.startswith("["):  # a JSON list of calls: complete once it all decodes
                values, _ = decode_json_values(block)
                if not values or not isinstance(values[0], list):
                    break
                calls = [call_from_json(v) for v in values[0]]
                if None in calls:
                    break
                out += [c for c in calls if c is not None]
            else:
                name, found, rest = block.partition(ARGS)
                values, _ = decode_json_values(rest)
                if not found or not values or not name.strip():
                    break
                out.append(FunctionCall(name.strip(), json.dumps(values[0], ensure_ascii=False)))
        return out
