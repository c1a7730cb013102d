"""A chat choice's generated text as OpenAI's message: reasoning_content (--reasoning-parser),
content, and tool_calls, whole or as stream deltas.

The text first goes through the reasoning parser, if any; what is left is the answer, read by
the request's tool mode:
- none: content;
- auto: the server's --tool-call-parser splits content and calls;
- required: the output was constrained to a JSON list of calls (`ChatCompletionRequest._tool_schema`);
- named: the output was constrained to the named function's arguments.
"""

from __future__ import annotations

from typing import Any

from octavo.reasoning import ReasoningParser, ReasoningStream
from octavo.tool_parsers import FunctionCall, ToolCallStream, ToolParser
from octavo.tool_parsers.json_calls import JsonToolParser


class ChatOutput:
    """How a request's choices are read: one per request (`ChoiceStream` per streamed choice)."""

    def __init__(
        self,
        mode: str,
        reasoning: ReasoningParser | None,
        tool_parser: ToolParser | None,
        named: str | None = None,
        single_call: bool = False,
    ) -> None:
        self.mode = mode
        self.reasoning = reasoning
        self.named = named
        self.single_call = single_call
        # required: the constrained list of calls reads as the JSON parser's format
        self.tool_parser = JsonToolParser() if mode == "required" else tool_parser if mode == "auto" else None

    def finish_reason(self, reason: str | None, num_calls: int) -> str | None:
        """OpenAI's: "tool_calls" when the model chose to call (auto, required), "stop" for a named call."""
        if reason == "stop" and num_calls and self.mode in ("auto", "required"):
            return "tool_calls"
        return reason

    def message(self, text: str) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        """(reasoning_content, content, tool_calls) of a whole output."""
        reasoning, content = self.reasoning.extract(text) if self.reasoning is not None else (None, text)
        calls: list[FunctionCall] = []
        if self.mode == "named":
            assert self.named is not None  # set for the named mode
            calls, content = [FunctionCall(self.named, content or "{}")], None
        elif self.tool_parser is not None:
            content, calls = self.tool_parser.extract(content or "")
        if self.single_call:
            calls = calls[:1]
        return reasoning, content, [c.to_openai() for c in calls]

    def stream(self) -> ChoiceStream:
        return ChoiceStream(self)


class ChoiceStream:
    """One streamed choice: text deltas in, (reasoning, content, tool call deltas) out."""

    def __init__(self, output: ChatOutput) -> None:
        self.output = output
        self.reasoning = ReasoningStream(output.reasoning) if output.reasoning is not None else None
        self.tools = ToolCallStream(output.tool_parser) if output.tool_parser is not None else None
        self.named_call: FunctionCall | None = None
        self.num_calls = 0

    def feed(self, delta: str, final: bool) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        reasoning, content = self.reasoning.feed(delta, final) if self.reasoning is not None else ("", delta)
        calls: list[dict[str, Any]] = []
        out = self.output
        if out.mode == "named":  # the arguments stream as they come, under one call
            assert out.named is not None  # set for the named mode
            if self.named_call is None and (content or final):
                self.named_call = FunctionCall(out.named, "")
                calls.append(self.named_call.to_openai(0))
                self.num_calls = 1
            if content:
                calls.append({"index": 0, "function": {"arguments": content}})
            content = ""
        elif self.tools is not None:
            content, new = self.tools.feed(content, final)
            for call in new:
                if out.single_call and self.num_calls:
                    break
                calls.append(call.to_openai(self.num_calls))
                self.num_calls += 1
        return reasoning or None, content or None, calls
