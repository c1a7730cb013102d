"""The adapters' weights on one linear layer, in device slots, and the step's token -> slot map.

Each `Linear` a LoRA may target gets a `LinearLoRA` (`Linear.lora`): A and B of every device
slot, stacked so that one call of the platform's `lora_shrink` and one of `lora_expand` run
every adapter of the batch on the layer (SGMV / BGMV style). A fused projection (qkv,
gate_up) has one slice per checkpoint module it holds: slice n of slot s is that module's
adapter, zeros where the adapter does not target it.
"""

from __future__ import annotations

import torch

from octavo.lora.adapter import LoRAAdapter
from octavo.platform import FusedOps


class LoRAStep:
    """What the layers read during one forward: each token's slot ([T] int64 on the device, -1
    for none) and the slots in use; `slots` is None in a step without adapters. While decode
    graphs are captured, `slots` is the graphs' static buffer and `capturing` makes every
    layer record its LoRA kernels (octavo.lora.manager.LoRAManager.graph_capture)."""

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None
        self.in_use: frozenset[int] = frozenset()
        self.capturing = False


class LinearLoRA:
    """Slots of A [max_loras, N, max_rank, in] and B transposed [max_loras, max_rank, out] (in
    `dtype`, the scaling folded into B; the layouts of the platform's LoRA ops) for a linear
    whose output rows are the N slices `targets` (checkpoint module names, in row order) of
    `slice_sizes` rows."""

    def __init__(
        self,
        targets: list[str],
        slice_sizes: tuple[int, ...],
        in_features: int,
        max_loras: int,
        max_rank: int,
        step: LoRAStep,
        ops: FusedOps,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.targets = targets
        self.slice_sizes = slice_sizes
        self.step = step
        self.ops = ops
        n, out = len(targets), sum(slice_sizes)
        self.a = torch.zeros(max_loras, n, max_rank, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(max_loras, max_rank, out, dtype=dtype, device=device)
        # slots whose adapter targets this layer: a step using none of them skips it
        self.targeted: set[int] = set()

    def set_slot(self, slot: int, adapter: LoRAAdapter | None) -> None:
        """Put `adapter`'s weights for this layer in `slot` (None: empty the slot)."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.targeted.discard(slot)
        if adapter is None:
            return
        start = 0
        for n, (name, size) in enumerate(zip(self.targets, self.slice_sizes)):
            ab = adapter.weights.get(name)
            if ab is not None:
                a, b = ab
                r = a.shape[0]
                self.a[slot, n, :r].copy_(a)
                self.b[slot, :r, start : start + size].copy_(b.T)
                self.targeted.add(slot)
            start += size

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y (the base layer's output for x) plus each token's adapter; y itself when no token
        of the step uses an adapter that targets this layer."""
        slots = self.step.slots
        if slots is None or (not self.step.capturing and self.targeted.isdisjoint(self.step.in_use)):
            return y
        if slots.shape[0] != x.shape[0]:  # a captured graph's rows: the front of its static buffer
            slots = slots[: x.shape[0]]  # (else the step's own tensor: ops may cache by its identity)
        h = self.ops.lora_shrink(x, self.a, slots)
        return self.ops.lora_expand(y, h, self.b, slots, self.slice_sizes)
