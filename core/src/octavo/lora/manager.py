"""The adapters of a running model: a host cache, device slots, and each step's token -> slot map.

- Host: adapters read and checked (octavo.lora.adapter), at most `max_cpu_loras`, least
  recently used dropped first; a request whose adapter was dropped reads it again from its path.
- Device: `max_loras` slots in every targeted layer (octavo.lora.layers). A step's adapters
  are put in slots before its forward, evicting the least recently used adapters the step
  does not use; the scheduler admits at most `max_loras` distinct adapters among running
  requests, so a step always fits.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch

from octavo.layers.linear import Linear
from octavo.lora.adapter import LoRAAdapter, load_adapter
from octavo.lora.config import LoRAConfig, LoRAError
from octavo.lora.layers import EmbeddingLoRA, LinearLoRA, LoRAStep
from octavo.lora.request import LoRARequest
from octavo.platform import FusedOps

logger = logging.getLogger("octavo")

#: the checkpoint modules a LoRA may target in each decoder layer, as PEFT names them
TARGET_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _model_targets(model) -> dict[Linear, list[tuple[str, int, int]]]:
    """Each targetable Linear of `model` with its slices: (module name, first row, rows)."""
    # the loader's own map of checkpoint modules to (fused) layers and their rows
    entry = getattr(model, "_linear_entry", None)
    if entry is None or getattr(model, "layers", None) is None:
        raise LoRAError(f"LoRA adapters are not supported for {type(model).__name__}")
    found: dict[Linear, list[tuple[str, int, int]]] = {}
    for i in range(len(model.layers)):
        for kind in TARGET_MODULES:
            name = f"layers.{i}.{kind}"
            linear, rows, _ = entry(name)
            if linear is None:
                continue
            start, size = rows if rows is not None else (0, linear.out_features)
            found.setdefault(linear, []).append((name, start, size))
    lm_head = getattr(model, "lm_head", None)
    if isinstance(lm_head, Linear):  # PEFT's `lm_head` target (the logits' rows: LinearLoRA.logits)
        found[lm_head] = [("lm_head", 0, lm_head.out_features)]
    for linear, slices in found.items():
        slices.sort(key=lambda s: s[1])
        assert sum(s[2] for s in slices) == linear.out_features, f"{slices} do not cover {linear}"
    return found


class LoRAManager:
    def __init__(self, config: LoRAConfig, model, ops: FusedOps, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.device = device
        self.step = LoRAStep()
        self.targets: dict[str, tuple[int, int]] = {}  # module -> (in_features, out_features)
        self.layers: list[LinearLoRA | EmbeddingLoRA] = []
        # the platform's own LoRA kernels are assumed graph-safe, and get the weights in the model's
        # dtype; core's default groups tokens on the host and multiplies in float32 (a CPU's torch
        # runs these small batched GEMMs 2-5x faster in float32 than in bfloat16)
        self.own_kernels = type(ops).lora_shrink is not FusedOps.lora_shrink
        weights_dtype = dtype if self.own_kernels else torch.float32
        for linear, slices in _model_targets(model).items():
            for name, _, size in slices:
                self.targets[name] = (linear.in_features, size)
            lora = LinearLoRA(
                [s[0] for s in slices],
                tuple(s[2] for s in slices),
                linear.in_features,
                config.max_loras,
                config.max_lora_rank,
                self.step,
                ops,
                device,
                weights_dtype,
                logits=slices[0][0] == "lm_head",
            )
            linear.lora = lora
            self.layers.append(lora)
        embed = getattr(model, "embed_tokens", None)
        if isinstance(embed, torch.Tensor) and hasattr(model, "embed_lora"):  # PEFT's `embed_tokens` target
            vocab, hidden = embed.shape
            self.targets["embed_tokens"] = (vocab, hidden)  # lora_embedding_A [r, vocab], _B [hidden, r]
            model.embed_lora = EmbeddingLoRA(
                vocab, hidden, config.max_loras, config.max_lora_rank, self.step, ops, device, weights_dtype
            )
            self.layers.append(model.embed_lora)
        self.graph_slots: torch.Tensor | None = None  # the decode graphs' static slots, once captured
        self.host: OrderedDict[int, LoRAAdapter] = OrderedDict()  # lora_int_id -> adapter, LRU first
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # lora_int_id -> device slot, LRU first
        self.loads = 0  # adapters put in device slots (evictions show as loads past max_loras)

    # ---- the host cache ----------------------------------------------------------------------
    def add(self, req: LoRARequest) -> LoRAAdapter:
        """Read and check `req`'s adapter, or find it in the host cache (LoRAError: it does not fit)."""
        adapter = self.host.get(req.lora_int_id)
        if adapter is not None and adapter.request.lora_path == req.lora_path:
            self.host.move_to_end(req.lora_int_id)
            return adapter
        adapter = load_adapter(req, self.targets, self.config.max_lora_rank)
        self.remove(req.lora_int_id)  # an id loaded again from another path replaces the old one
        self.host[req.lora_int_id] = adapter
        while len(self.host) > self.config.cpu_capacity:
            old, _ = self.host.popitem(last=False)
            logger.info("LoRA adapter %d dropped from the host cache", old)
        return adapter

    def remove(self, lora_int_id: int) -> bool:
        """Forget an adapter (host and device); False if it was not loaded."""
        had = self.host.pop(lora_int_id, None) is not None
        slot = self.slot_of.pop(lora_int_id, None)
        if slot is not None:
            for layer in self.layers:
                layer.set_slot(slot, None)
        return had or slot is not None

    def loaded(self) -> list[LoRARequest]:
        return [a.request for a in self.host.values()]

    # ---- one step ----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.step.slots is not None

    def prepare(self, adapters: Sequence[tuple[LoRARequest | None, int]], num_tokens: int) -> None:
        """Map a step's tokens to slots: `adapters` holds each request's adapter (or None) and
        token count, in batch order; tokens past them (padding) get none."""
        if all(req is None for req, _ in adapters):
            self.finish()
            return
        wanted = {req.lora_int_id: req for req, _ in adapters if req is not None}
        if len(wanted) > self.config.max_loras:
            raise RuntimeError(f"a step uses {len(wanted)} LoRA adapters but there are {self.config.max_loras} slots")
        slot = {i: self._slot(req, wanted) for i, req in wanted.items()}
        per_token: list[int] = []
        for req, n in adapters:
            per_token += [slot[req.lora_int_id] if req is not None else -1] * n
        per_token += [-1] * (num_tokens - len(per_token))
        self.step.slots = torch.tensor(per_token, dtype=torch.int64).to(self.device, non_blocking=True)
        self.step.logit_slots = None
        self.step.in_use = frozenset(slot.values())

    def finish(self) -> None:
        self.step.slots = None
        self.step.in_use = frozenset()
        self.step.logit_slots = None

    def logit_rows(self, rows: torch.Tensor | slice) -> None:
        """Before the model's compute_logits on `rows` of this step's forward output (an index
        tensor or a slice): the lm_head's adapters follow those rows' slots."""
        slots = self.step.slots
        self.step.logit_slots = None if slots is None else slots[rows]

    # ---- captured decode graphs --------------------------------------------------------------
    @contextlib.contextmanager
    def graph_capture(self, max_tokens: int) -> Iterator[None]:
        """Around the start-up forwards (warm-up shapes, the capture of decode graphs) of at most
        `max_tokens` rows: with the platform's own LoRA kernels every layer runs them (compiled
        now) and the graphs record them, reading a static slots buffer that each replay fills
        (`stage_graph`; rows without an adapter, -1, cost an early exit). Without them (core's
        default ops, which group tokens on the host) the graphs hold no LoRA."""
        if not self.own_kernels:
            yield
            return
        self.graph_slots = torch.full((max_tokens,), -1, dtype=torch.int64, device=self.device)
        self.step.slots, self.step.capturing = self.graph_slots, True
        try:
            yield
        finally:
            self.step.capturing = False
            self.finish()

    def stage_graph(self) -> bool:
        """Before a graph replay: this step's slots into the graphs' buffer, -1 past them. False
        when the step cannot replay: it uses adapters and the graphs hold no LoRA."""
        buf, slots = self.graph_slots, self.step.slots
        if buf is None or (slots is not None and slots.shape[0] > buf.shape[0]):
            return slots is None
        buf.fill_(-1)
        if slots is not None:
            buf[: slots.shape[0]].copy_(slots)
        return True

    def _slot(self, req: LoRARequest, wanted: dict[int, LoRARequest]) -> int:
        """`req`'s device slot, loading it into a free slot or the least recently used one
        that this step does not need."""
        slot = self.slot_of.get(req.lora_int_id)
        if slot is not None:
            self.slot_of.move_to_end(req.lora_int_id)
            return slot
        used = set(self.slot_of.values())
        free = [s for s in range(self.config.max_loras) if s not in used]
        if free:
            slot = free[0]
        else:
            victim = next(i for i in self.slot_of if i not in wanted)
            slot = self.slot_of.pop(victim)
            logger.info("LoRA adapter %d evicted from device slot %d", victim, slot)
        adapter = self.add(req)
        for layer in self.layers:
            layer.set_slot(slot, adapter)
        self.slot_of[req.lora_int_id] = slot
        self.loads += 1
        return slot
