"""Tool-call parsers (`--tool-call-parser`): a model's output split into content and OpenAI
tool calls, whole or streamed (`ToolCallStream`), for `tool_choice="auto"`."""

from __future__ import annotations

from octavo.tool_parsers.base import FunctionCall, ToolCallStream, ToolParser
from octavo.tool_parsers.hermes import HermesToolParser
from octavo.tool_parsers.json_calls import JsonToolParser
from octavo.tool_parsers.llama3_json import Llama3JsonToolParser
from octavo.tool_parsers.mistral import MistralToolParser

#: --tool-call-parser NAME -> its parser
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesToolParser, Llama3JsonToolParser, MistralToolParser, JsonToolParser)
}

__all__ = ["TOOL_PARSERS", "FunctionCall", "ToolCallStream", "ToolParser", "get_tool_parser"]


def get_tool_parser(name: str) -> ToolParser:
    cls = TOOL_PARSERS.get(name)
    if cls is None:
        raise ValueError(f"unknown tool call parser {name!r}; choose one of {', '.join(sorted(TOOL_PARSERS))}")
    return cls()
