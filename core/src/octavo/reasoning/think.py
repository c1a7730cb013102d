"""`<think>...</think>` reasoning, as DeepSeek-R1 and Qwen3 write it.

The two differ only in where the thinking starts. DeepSeek-R1's chat template opens it in the
prompt, so the output is reasoning from its first token (a leading `<think>` is dropped) up to
the first `</think>`, all of it if the model never closes it. Qwen3 thinks only when its output
starts with `<think>` (with thinking disabled, or in an answer with no thinking, everything is
content). The answer is everything after `</think>`, as written.
"""

from __future__ import annotations

from octavo.markers import partial_marker


class ReasoningParser:
    start = "<think>"
    end = "</think>"
    #: the output is reasoning from its start without an opening marker
    opened_by_prompt = True

    def _body(self, text: str, final: bool) -> str | None:
        """The output after its opening marker when it reasons, "" / None: it does not
        (None when not final and the text so far could still open the thinking)."""
        head = text.lstrip()
        if head.startswith(self.start):
            return head[len(self.start) :]
        if not final and self.start.startswith(head):
            return None  # whitespace, or part of `<think>`: undecided
        return text if self.opened_by_prompt else ""

    def split(self, text: str, final: bool = True) -> tuple[str, str]:
        """(reasoning, content). Not final: what is sure so far (text that may still be a
        marker is in neither), so the splits of a growing text only grow."""
        body = self._body(text, final)
        if body is None:
            return "", ""
        if not body and not self.opened_by_prompt and not text.lstrip().startswith(self.start):
            return "", text  # no thinking: all content
        reasoning, found, content = body.partition(self.end)
        if found:
            return reasoning, content
        hold = 0 if final else partial_marker(body, [self.end])
        return body[: len(body) - hold], ""

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output; None where empty."""
        reasoning, content = self.split(text)
        return reasoning or None, content or None


class DeepSeekR1ReasoningParser(ReasoningParser):
    opened_by_prompt = True


class Qwen3ReasoningParser(ReasoningParser):
    opened_by_prompt = False


class ReasoningStream:
    """A streamed output's deltas split into (reasoning delta, content delta); together they
    add up to `ReasoningParser.extract` of the whole text."""

    def __init__(self, parser: ReasoningParser) -> None:
        self.parser = parser
        self.text = ""
        self._sent = (0, 0)

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        self.text += delta
        reasoning, content = self.parser.split(self.text, final)
        r0, c0 = self._sent
        self._sent = (max(r0, len(reasoning)), max(c0, len(content)))
        return reasoning[r0:], content[c0:]
