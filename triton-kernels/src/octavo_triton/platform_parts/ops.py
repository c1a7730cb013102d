"""The fused ops on octavo_triton's kernels (same semantics as octavo.platform.ops, where
each op is defined), the sampler's draw included."""

from __future__ import annotations

import torch

from octavo.platform import FusedOps


class TritonOps(FusedOps):
    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from octavo_triton.rms_norm import rms_norm

        return rms_norm(x, weight, eps, residual)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from octavo_triton.rotary import rotary

        return rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        from octavo_triton.activation import silu_and_mul

        return silu_and_mul(x)

    def sample(self, logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        from octavo_triton.sampling import sample

        return sample(logits, temperatures, u)

    def lora_shrink(self, x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        from octavo_triton.lora import lora_shrink

        return lora_shrink(x, a, slots)

    def lora_expand(
        self, y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
    ) -> torch.Tensor:
        from octavo_triton.lora import lora_expand

        return lora_expand(y, h, b, slots, slice_sizes)

    def fused_moe(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        activation: str = "silu",
    ) -> torch.Tensor:
        from octavo_triton.fused_moe import fused_moe

        return fused_moe(x, w13, w2, topk_weights, topk_ids, activation)
