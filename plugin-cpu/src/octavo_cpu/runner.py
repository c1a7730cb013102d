"""The CPU's step runner: core's eager runner, with decode steps in one native call."""

from __future__ import annotations

import ctypes
import gc

import torch

from octavo.model_runner import ModelRunner
from octavo.platform import ForwardBatch
from octavo_cpu import decode_forward


def _return_freed_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    Loading frees the weights' float32 staging and, where the linears pack their weights,
    the [out, in] copies (212 MB for SmolLM2 in bf16). glibc keeps such blocks for reuse
    instead of unmapping them (its mmap threshold rises as big blocks are freed), so without
    this the resident memory would not shrink: SmolLM2 bf16 engine right after start-up,
    877 MB without it, 658 MB with it (860 MB with it had the unpacked weights stayed).
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        gc.collect()  # loading's garbage in reference cycles first (else it is freed, and kept, later)
        trim(0)


class CpuModelRunner(ModelRunner):
    """Every step runs op by op on the platform's parts, except decode-only steps of a model
    the one-call decode step covers (decode_forward.py): those run every layer in C++."""

    #: the decode step's plan, built once the KV cache exists (None: every step op by op)
    _decode_plan: decode_forward.DecodePlan | None = None

    def __init__(self, config, platform, source) -> None:
        super().__init__(config, platform, source)  # loads the weights, packs the linears'
        _return_freed_heap()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        super().initialize_kv_cache(num_blocks)
        structure = self.model.structure() if hasattr(self.model, "structure") else None
        self._decode_plan = decode_forward.build_plan(structure, self.kv_caches)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        # the one-call decode step has no LoRA: a step with adapters runs op by op
        lora = self.lora_manager is not None and self.lora_manager.active
        plan = None if lora else self._decode_plan
        # decode-only: as many tokens as requests, each request one (q_len 1)
        if plan is not None and batch.max_query_len == 1 and batch.query_start_loc_cpu[-1] == batch.num_reqs:
            hidden = decode_forward.run_decode(plan, batch)
            if hidden is not None:
                return hidden
        return super().forward(batch)
