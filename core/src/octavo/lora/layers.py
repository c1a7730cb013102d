"""The adapters' weights on one linear layer, in device slots, and the step's token -> slot map.

Each `Linear` a LoRA may target gets a `LinearLoRA` (`Linear.lora`): A and B of every device
slot, stacked so that one call of the platform's `lora_shrink` and one of `lora_expand` run
every adapter of the batch on the layer (SGMV / BGMV style). A fused projection (qkv,
gate_up) has one slice per checkpoint module it holds: slice n of slot s is that module's
adapter, zeros where the adapter does not target it. The lm_head is such a layer too (its
rows are the logits' rows); the embedding has an `EmbeddingLoRA`.
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
        # the slots of the rows the lm_head is given (the runner's `logit_rows`: logits are taken
        # at some rows of the forward's output, whose order the lm_head cannot know)
        self.logit_slots: torch.Tensor | None = None


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
        logits: bool = False,
    ) -> None:
        self.targets = targets
        self.slice_sizes = slice_sizes
        self.step = step
        self.ops = ops
        self.logits = logits  # the lm_head: its rows are `step.logit_slots`' (see LoRAStep)
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
        if self.logits:  # never inside a captured graph: logits are computed after its replay
            if self.step.capturing:
                return y
            slots = self.step.logit_slots
            if slots is None or slots.shape[0] != x.shape[0]:
                raise RuntimeError("LoRA on lm_head: logits computed without LoRAManager.logit_rows naming their rows")
        elif slots.shape[0] != x.shape[0]:  # a captured graph's rows: the front of its static buffer
            slots = slots[: x.shape[0]]  # (else the step's own tensor: ops may cache by its identity)
        h = self.ops.lora_shrink(x, self.a, slots)
        return self.ops.lora_expand(y, h, self.b, slots, self.slice_sizes)


class EmbeddingLoRA:
    """Slots of the embedding's adapters (PEFT's lora_embedding_A [r, vocab] and lora_embedding_B
    [hidden, r]) in `dtype`: A transposed [max_loras, vocab, max_rank] (the shrink of a token is
    a row lookup) and B transposed [max_loras, max_rank, hidden] with the scaling folded in."""

    def __init__(
        self,
        vocab: int,
        hidden: int,
        max_loras: int,
        max_rank: int,
        step: LoRAStep,
        ops: FusedOps,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.step = step
        self.ops = ops
        self.a = torch.zeros(max_loras, vocab, max_rank, dtype=dtype, device=device)
        self.b = torch.zeros(max_loras, max_rank, hidden, dtype=dtype, device=device)
        self.targeted: set[int] = set()

    def set_slot(self, slot: int, adapter: LoRAAdapter | None) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.targeted.discard(slot)
        ab = adapter.weights.get("embed_tokens") if adapter is not None else None
        if ab is None:
            return
        a, b = ab
        r = a.shape[0]
        self.a[slot, :, :r].copy_(a.T)
        self.b[slot, :r].copy_(b.T)
        self.targeted.add(slot)

    def apply(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x (the embedding rows of input_ids) plus each token's adapter, before any scaling the
        model applies to its embeddings (PEFT adapts the embedding module itself)."""
        slots = self.step.slots
        if slots is None or (not self.step.capturing and self.targeted.isdisjoint(self.step.in_use)):
            return x
        slots = slots[: x.shape[0]] if slots.shape[0] != x.shape[0] else slots
        # h[t] = A[slot t][id t]: row lookups with no host sync (graph-safe), zeros without a slot
        h = self.a[slots.clamp(min=0), input_ids] * (slots >= 0).unsqueeze(1).to(self.a.dtype)
        return self.ops.lora_expand(x, h.to(x.dtype).unsqueeze(1), self.b, slots, (x.shape[1],))
