"""A linear layer whose weights and GEMM belong to the platform's linear method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from octavo.platform import LinearMethod

if TYPE_CHECKING:
    from octavo.lora.layers import LinearLoRA


class Linear(nn.Module):
    """y = x @ W.T (+ b), W stored [out_features, in_features] as in checkpoints.

    The method creates the parameters the loader fills (`weight`, `bias`), may repack them once
    loading is done (`process_weights_after_loading`, called by the runner), and runs the GEMM.
    With LoRA enabled, `lora` holds the adapters' weights for this layer (octavo.lora.layers),
    added to the GEMM's output for the tokens of the step whose request has an adapter.
    """

    def __init__(self, in_features: int, out_features: int, method: LinearMethod, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.method = method
        method.create_weights(self, in_features, out_features, bias)
        self.lora: LinearLoRA | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.method.apply(self, x)
        return y if self.lora is None else self.lora.apply(x, y)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.method.__class__.__name__}"
