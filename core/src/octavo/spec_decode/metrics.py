"""Speculative decoding's counters, as vLLM reports them (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodeStats:
    """Totals since the engine started. A draft is one request's proposals verified in one
    step; `num_accepted_tokens_per_pos[j]` counts the drafts whose token at position j stood."""

    num_speculative_tokens: int
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.num_accepted_tokens_per_pos:
            self.num_accepted_tokens_per_pos = [0] * self.num_speculative_tokens

    def copy(self) -> SpecDecodeStats:
        """A snapshot that later steps do not change."""
        return SpecDecodeStats(
            self.num_speculative_tokens,
            self.num_drafts,
            self.num_draft_tokens,
            self.num_accepted_tokens,
            list(self.num_accepted_tokens_per_pos),
        )

    def since(self, earlier: SpecDecodeStats) -> SpecDecodeStats:
        """The counts between an earlier snapshot and this one (a benchmark's timed pass)."""
        per_pos = [a - b for a, b in zip(self.num_accepted_tokens_per_pos, earlier.num_accepted_tokens_per_pos)]
        return SpecDecodeStats(
            self.num_speculative_tokens,
            self.num_drafts - earlier.num_drafts,
            self.num_draft_tokens - earlier.num_draft_tokens,
            self.num_accepted_tokens - earlier.num_accepted_tokens,
            per_pos,
        )

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        """One verified draft of `num_proposed` tokens, the first `num_accepted` of which stood."""
        self.num_drafts += 1
        self.num_draft_tokens += num_proposed
        self.num_accepted_tokens += num_accepted
        for j in range(num_accepted):
            self.num_accepted_tokens_per_pos[j] += 1

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed tokens (None before any proposal)."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        """Tokens emitted per verified draft: the accepted ones plus the one drawn after them."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else None

    def summary(self) -> str:
        """One line for the bench tools and the logs."""
        if not self.num_drafts:
            return "speculative decoding: no drafts proposed"
        per_pos = ", ".join(f"{n / self.num_drafts:.2f}" for n in self.num_accepted_tokens_per_pos)
        return (
            f"speculative decoding: acceptance rate {self.acceptance_rate:.1%} "
            f"({self.num_accepted_tokens}/{self.num_draft_tokens} tokens in {self.num_drafts} drafts), "
            f"mean acceptance length {self.mean_acceptance_length:.2f}, per position [{per_pos}]"
        )
