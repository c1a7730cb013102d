"""Pooling hidden states into one vector per request, chunk by chunk.

A prompt may run in several steps (chunked prefill): each step's rows of a request are
folded into its `PoolingState`, and the vector is read when the prompt's last chunk ran.
The hidden states are the model's final-norm output, what sentence-transformers pools.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.pooling_params import PoolingParams

#: not a pooling of the checkpoint's but of the token_* tasks: every prompt position's row
ALL = "ALL"


class PoolingState:
    """One request's pooling so far: the [CLS] (first) row, the last row, a running sum, or
    (ALL) every row so far."""

    __slots__ = ("kind", "value", "count", "chunks")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value: torch.Tensor | None = None
        self.count = 0
        self.chunks: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor, start_pos: int) -> None:
        """Fold in the hidden states of prompt positions start_pos.. (rows [n, hidden])."""
        if self.kind == "CLS":
            if start_pos == 0:
                self.value = rows[0].float()
        elif self.kind == "LAST":
            self.value = rows[-1].float()
        elif self.kind == ALL:  # chunks run in prompt order; a copy, as a view keeps the step's whole output
            self.chunks.append(rows.clone())
        else:  # MEAN: float32 sums, divided once at the end
            s = rows.float().sum(dim=0)
            self.value = s if self.value is None else self.value + s
            self.count += rows.shape[0]

    def result(self) -> torch.Tensor:
        """The pooled vector ([hidden]), or for ALL the prompt's rows ([prompt tokens, hidden])."""
        if self.kind == ALL:
            assert self.chunks, "the request's first chunk never ran"
            return torch.cat(self.chunks).float()
        assert self.value is not None, "the request's first chunk never ran"
        return self.value / self.count if self.kind == "MEAN" else self.value


def embed(pooled: torch.Tensor, params: PoolingParams, default_normalize: bool) -> torch.Tensor:
    """An embedding from a pooled state (or one per row): the first `dimensions` features,
    then unit length."""
    if params.dimensions is not None:
        pooled = pooled[..., : params.dimensions]
    normalize = default_normalize if params.normalize is None else params.normalize
    return F.normalize(pooled, dim=-1) if normalize else pooled


def activate(logits: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    """Classifier probabilities (of each row): softmax over the labels, sigmoid for a single label."""
    if params.use_activation is False:
        return logits
    return logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(dim=-1)
