"""RMSNorm as a module, computed by the platform's fused op."""

from __future__ import annotations

import torch
from torch import nn

from octavo.platform import FusedOps


class RMSNorm(nn.Module):
    """RMSNorm through the platform's fused op (with the residual add fused when given one)."""

    def __init__(self, size: int, eps: float, ops: FusedOps) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual)
