"""The fused ops on the native kernels (csrc/dense_impl.h); core's torch definitions where
they do not apply (float16, a weight or table in another dtype, no extension)."""

from __future__ import annotations

import torch

from octavo.platform import FusedOps
from octavo_cpu import _native
from octavo_cpu import lora as _lora


class CpuOps(FusedOps):
    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # one pass per row instead of ~6 torch ops; other dtypes (and a weight whose dtype
        # differs from x's, which promotes the result) keep the default
        if (
            _native.available()
            and x.dtype in _native.SUPPORTED_DTYPES
            and weight.dtype == x.dtype
            and (residual is None or residual.dtype == x.dtype)
        ):
            return _native.rms_norm(x, weight, eps, residual)
        return super().rms_norm(x, weight, eps, residual)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # in place through the views of the fused qkv output: no copies, no cat
        if (
            _native.available()
            and q.dtype in _native.SUPPORTED_DTYPES
            and k.dtype == q.dtype
            and q.dim() == 3
            and k.dim() == 3
            and q.stride(-1) == 1
            and k.stride(-1) == 1
            and cos_sin_cache.dtype == torch.float32
            and cos_sin_cache.stride(-1) == 1
        ):
            return _native.rotary(q, k, positions, cos_sin_cache)
        return super().rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        if _native.available() and x.dtype in _native.SUPPORTED_DTYPES:
            return _native.silu_and_mul(x)
        return super().silu_and_mul(x)

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
        # structured outputs' mask in one pass over the words (torch's definition expands
        # every bit to a byte first: 64 x 49k logits ~33 ms against ~1-3 ms here)
        if _native.available() and logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(-1) == 1:
            return _native.apply_token_bitmask(logits, bitmask)
        return super().apply_token_bitmask(logits, bitmask)

    def sample(self, logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        # one native call reads each row twice from cache (max, block sums) and scans one
        # block, where the torch path makes five passes and two temporaries of [S, V]
        if (
            _native.available()
            and logits.dtype in _native.SUPPORTED_DTYPES
            and logits.dim() == 2
            and logits.stride(-1) == 1
        ):
            return _native.sample(logits, temperatures, u)
        return super().sample(logits, temperatures, u)

    def lora_shrink(self, x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # multi-LoRA in one native call per layer (octavo_cpu.lora): no host-side grouping, no
        # float32 copies of the adapters, each row of A read once for all of its slot's tokens
        if x.dim() == 2 and slots.device.type == "cpu" and _lora.supports(x, a):
            return _lora.lora_shrink(x, a, slots)
        return super().lora_shrink(x, a, slots)

    def lora_expand(
        self, y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
    ) -> torch.Tensor:
        if y.dim() == 2 and slots.device.type == "cpu" and _lora.supports(y, h, b):
            return _lora.lora_expand(y, h, b, slots, slice_sizes)
        return super().lora_expand(y, h, b, slots, slice_sizes)
