"""Incremental detokenization and stop strings.

Each step decodes a small window of tokens (the last few already-emitted ones plus the
new one) and emits only the text that is new and complete: a window that ends in the
replacement character is a multi-byte character cut in half, so it waits for the next
token. Text that might still turn out to be the start of a stop string is held back
from streaming until it is resolved.
"""

from __future__ import annotations

from octavo.sampling_params import SamplingParams

# prompt tokens used as left context for the first output tokens, so a tokenizer that
# drops a word's leading space at the start of a decode still renders it
_PROMPT_CONTEXT = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.skip_special = params.skip_special_tokens
        self.ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        assert isinstance(params.stop, list)  # SamplingParams.__post_init__ made it one
        self.stops = params.stop
        self.stop_hold = max((len(s) for s in self.stops), default=1) - 1
        self.sent = 0  # characters already returned by `delta`

    def _decode(self, ids: list[int]) -> str:
        return (
            self.tokenizer.decode(
                ids,
                skip_special_tokens=self.skip_special,
                spaces_between_special_tokens=self.params.spaces_between_special_tokens,
            )
            if ids
            else ""
        )

    def add_token(self, token_id: int) -> str | None:
        """Append one token; returns the stop string if the text now contains one."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix) :]
            before = len(self.text)
            self.text += new
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return self._check_stop(before)
        return None

    def flush(self) -> None:
        """At the end: emit what was held back waiting for more bytes of a character, so
        the final text equals decoding the whole list."""
        if self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            full = self._decode(self.ids[self.prefix_offset :])
            self.text += full[len(prefix) :]
            self.prefix_offset = self.read_offset = len(self.ids)

    def _check_stop(self, before: int) -> str | None:
        for stop in self.stops:
            # only look where the new text could have completed a stop string
            i = self.text.find(stop, max(0, before - len(stop) + 1))
            if i != -1:
                end = i + len(stop) if self.params.include_stop_str_in_output else i
                self.text = self.text[:end]
                return stop
        return None

    def delta(self, finished: bool) -> str:
        """Text not yet returned; while running, hold back a possible partial stop string."""
        limit = len(self.text) if finished else max(self.sent, len(self.text) - self.stop_hold)
        out = self.text[self.sent : limit]
        self.sent = limit
        return out

    def visible_text(self, finished: bool) -> str:
        return self.text if finished else self.text[: max(0, len(self.text) - self.stop_hold)]
