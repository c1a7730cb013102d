"""Phi-3 and Phi-4: the Llama graph. Their checkpoints hold q, k and v in one `qkv_proj` and
gate and up in one `gate_up_proj`, split here into the names the Llama loader slices per rank;
LongRoPE scaling and partial rotary come from the rotary table builder (layers/rotary.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from octavo.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._split_fused(weights))

    def _split_fused(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        cfg = self.config
        q = cfg.num_attention_heads * self.head_dim
        kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * self.head_dim
        fused = {
            "self_attn.qkv_proj.weight": (("self_attn.q_proj.weight", q), ("self_attn.k_proj.weight", kv),
                                          ("self_attn.v_proj.weight", kv)),
            "mlp.gate_up_proj.weight": (("mlp.gate_proj.weight", cfg.intermediate_size),
                                        ("mlp.up_proj.weight", cfg.intermediate_size)),
        }  # fmt: skip
        for name, tensor in weights:
            prefix, _, rest = name.partition(".layers.")
            index, _, suffix = rest.partition(".")
            if suffix not in fused:
                yield name, tensor
                continue
            parts = fused[suffix]
            sizes = [size for _, size in parts]
            if tensor.shape[0] != sum(sizes):
                raise ValueError(f"weight {name!r} has {tensor.shape[0]} rows, expected {sum(sizes)} ({sizes} fused)")
            for (part, _), piece in zip(parts, tensor.split(sizes)):
                yield f"{prefix}.layers.{index}.{part}", piece
