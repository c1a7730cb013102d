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


class Float32RMSNorm(nn.Module):
    """RMSNorm computed wholly in float32 and rounded once, scaling by `weight_offset + weight`
    (the platform's `rms_norm_f32`): Gemma's norms (offset 1: its checkpoints store the weight
    minus one) and OLMo 2's (offset 0) round there, where Llama's round before the weight."""

    def __init__(self, size: int, eps: float, ops: FusedOps, weight_offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps
        self.weight_offset = weight_offset
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm_f32(x, self.weight, self.eps, residual, self.weight_offset)
