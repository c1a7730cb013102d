"""N-gram prompt lookup: propose the tokens that followed an earlier occurrence of the context's end.

Outputs that copy their input (edit this text, answer from this document, code completion)
repeat long runs of the context; where the last n tokens occurred before, the tokens that came
after them then are a cheap, often right, guess of what comes next. No model, no device work.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramProposer:
    def __init__(self, num_speculative_tokens: int, prompt_lookup_max: int, prompt_lookup_min: int) -> None:
        self.k = num_speculative_tokens
        self.max_n = prompt_lookup_max
        self.min_n = prompt_lookup_min

    def propose(self, token_ids: Sequence[int], k: int | None = None) -> list[int]:
        """Up to k tokens (default: num_speculative_tokens) following the latest earlier
        occurrence of the longest suffix n-gram (prompt_lookup_min <= n <= prompt_lookup_max);
        [] when no suffix of prompt_lookup_min tokens occurred before."""
        k = self.k if k is None else k
        end = self._match_end(token_ids)
        return [] if end < 0 or k <= 0 else list(token_ids[end + 1 : end + 1 + k])

    def _match_end(self, t: Sequence[int]) -> int:
        """Where the best earlier match of the context's suffix ends: the longest (up to
        max_n), and among those the latest; -1 when none reaches min_n."""
        last = len(t) - 1
        if last < 1:
            return -1
        best_end, best_n = -1, self.min_n - 1
        want = t[last]
        # one pass from the end: each earlier copy of the last token is a candidate match end
        for e in range(last - 1, -1, -1):
            if t[e] != want:
                continue
            n = 1
            while n < self.max_n and n <= e and t[e - n] == t[last - n]:
                n += 1
            if n > best_n:
                best_end, best_n = e, n
                if n == self.max_n:
                    break  # nothing longer can be found; later ones were seen first
        return best_end
