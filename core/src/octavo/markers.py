"""Markers in streamed text (`<think>`, `<tool_call>`, ...) that may arrive split across deltas."""

from __future__ import annotations

from collections.abc import Iterable


def partial_marker(text: str, markers: Iterable[str]) -> int:
    """How many trailing characters of `text` could be the start of one of `markers`: a
    stream holds them back until the next delta says whether the marker is there."""
    longest = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), longest, -1):
            if text.endswith(m[:n]):
                longest = n
                break
    return longest
