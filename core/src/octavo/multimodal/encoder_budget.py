"""The scheduler's side of the vision encoder: which images a step encodes (no torch).

An image's encoder output is needed by the step that computes its first placeholder token
still uncomputed, and kept by the runner (octavo.multimodal.encoder_cache) until the step
that computes its last one: so a prefill chunk may end inside an image, and the encoder
runs once per image however many chunks its tokens take. A step encodes at most `budget`
image tokens (an image larger than the whole budget runs alone, so none waits forever); a
chunk that would need an image past the budget stops before that image's tokens.

Invariant: `encoded[request_id]` holds the images whose outputs the runner keeps for that
request; both sides drop an image once a scheduled chunk reaches its end, and all of a
request's when it is preempted or finishes.
"""

from __future__ import annotations


class EncoderBudget:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.left = budget
        self.encoded: dict[str, set[int]] = {}

    def new_step(self) -> None:
        self.left = self.budget

    def fit(self, request_id: str, items, start: int, n: int) -> tuple[int, tuple[int, ...]]:
        """The tokens of chunk [start, start + n) that can run this step (n or fewer) and
        the images it must encode first. `items` have `offset` and `length`, in prompt order."""
        have = self.encoded.get(request_id, ())
        left = self.left
        encode: list[int] = []
        for i, item in enumerate(items):
            if item.offset >= start + n:
                break
            if item.offset + item.length <= start or i in have:
                continue  # computed already, or its output is kept
            alone = left == self.budget and not encode  # nothing encoded yet this step
            if item.length > left and not alone:
                return max(0, item.offset - start), tuple(encode)
            encode.append(i)
            left -= item.length
        return n, tuple(encode)

    def commit(self, request_id: str, items, encode: tuple[int, ...], end: int) -> None:
        """A chunk ending at token `end` was scheduled with `encode`: charge the budget, keep
        the images it does not finish, drop those it does."""
        have = self.encoded.setdefault(request_id, set())
        for i in encode:
            self.left -= items[i].length
            have.add(i)
        for i in list(have):
            if items[i].offset + items[i].length <= end:
                have.discard(i)
        if not have:
            del self.encoded[request_id]

    def forget(self, request_id: str) -> None:
        self.encoded.pop(request_id, None)
