"""The shape every tool-call parser shares: where the calls start, which are complete, and the
streaming that turns a growing output into content deltas and finished calls."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from octavo.markers import partial_marker


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's tool call (with `index` for a streamed delta)."""
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


def call_from_json(obj: Any) -> FunctionCall | None:
    """{"name": ..., "arguments" | "parameters": {...}} as a call; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # already JSON text (some models write it so)
        return FunctionCall(obj["name"], args)
    return FunctionCall(obj["name"], json.dumps(args, ensure_ascii=False))


def decode_json_values(text: str, separators: str = " \n\t\r;,") -> tuple[list[Any], int]:
    """The complete JSON values at the start of `text`, one after another (separated by
    whitespace or `separators`), and where the first incomplete one starts."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in separators:
            pos += 1
        if pos >= len(text):
            return values, pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return values, pos
        values.append(value)
        pos = end


class ToolParser:
    """Subclasses say where the tool calls begin (`start`) and parse them (`calls`); text
    before the start is content. `markers`: the strings that open tool calls, held back from
    streamed content while a delta may have cut one in half."""

    name = ""
    markers: tuple[str, ...] = ()

    def start(self, text: str) -> int | None:
        """Where the tool calls begin in the output so far; None: none (yet)."""
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else None

    def held(self, text: str) -> int:
        """Trailing characters of an output without calls so far that may still open one."""
        return partial_marker(text, self.markers)

    def calls(self, text: str, final: bool) -> list[FunctionCall]:
        """The complete calls in `text` (from `start` on); final: the whole output is there."""
        raise NotImplementedError

    def skip_special_tokens(self) -> bool | None:
        """The detokenizer setting the format needs (None: the request's own): a format whose
        markers are special tokens must keep them in the text."""
        return None

    def split(self, text: str, final: bool = True) -> tuple[str, list[FunctionCall]]:
        """(content, calls) of the output so far. Not final: content that may still be a
        marker is held back. A final output whose calls do not parse is all content."""
        start = self.start(text)
        if start is None:
            return (text if final else text[: len(text) - self.held(text)]), []
        calls = self.calls(text[start:], final)
        if final and not calls:
            return text, []
        return text[:start], calls

    def extract(self, text: str) -> tuple[str | None, list[FunctionCall]]:
        """(content, calls) of a whole output; content None where empty or only whitespace."""
        content, calls = self.split(text)
        return (content if content.strip() else None), calls


class ToolCallStream:
    """A streamed output's deltas as (content delta, new complete calls); together they add up
    to `ToolParser.extract` of the whole text (but for whitespace-only content)."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.text = ""
        self._content_sent = 0
        self._calls: list[FunctionCall] = []

    @property
    def num_calls(self) -> int:
        return len(self._calls)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[FunctionCall]]:
        self.text += delta
        content, calls = self.parser.split(self.text, final)
        new_content = content[self._content_sent :]
        self._content_sent = max(self._content_sent, len(content))
        # a call keeps the id it was streamed with; calls only ever grow in number
        new = calls[len(self._calls) :]
        self._calls += new
        return new_content, new
