"""Speculative decoding: proposers, verification by rejection sampling, metrics.

A step verifies a decoding request's k proposed tokens in the same forward that computes its
last token: the scheduler schedules them as tokens whose KV is written, the runner returns the
target's logits at each of those positions, the rejection sampler keeps a prefix of them and
draws one more, and the scheduler rolls the KV of the rest back. See docs/speculative-decoding.md.
"""

from octavo.spec_decode.config import SpeculativeConfig
from octavo.spec_decode.metrics import SpecDecodeStats

__all__ = ["SpecDecodeStats", "SpeculativeConfig"]
