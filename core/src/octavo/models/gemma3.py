"""Gemma 3 (text): Gemma 2's graph with per-head q/k norms, a global layer every N layers
(`layer_types`; sliding-window layers between), and two rotary tables: the local layers' base
frequency (10,000) and the global layers' (1,000,000, which may be scaled). Its configs
leave both soft-caps off.
"""

from __future__ import annotations

import torch

from octavo.layers.rotary import build_cos_sin_cache
from octavo.models.gemma2 import Gemma2ForCausalLM

#: cos_sin_cache's tables, in order: each layer reads the one its `layer_types` entry names
_ROPE_TABLES = ("full_attention", "sliding_attention")


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True

    def make_cos_sin_cache(self, max_positions: int) -> torch.Tensor:
        tables = [build_cos_sin_cache(self.config, self.head_dim, max_positions, kind) for kind in _ROPE_TABLES]
        return torch.stack(tables)

    def rope_table(self, index: int) -> int:
        return _ROPE_TABLES.index(self.config.layer_types[index])
