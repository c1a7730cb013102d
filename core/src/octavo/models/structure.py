"""What a dense pre-norm decoder is, as data a platform's runner may compute its own way.

A runner that runs whole layers in one native call (octavo-cpu's decode step) or compiles
them must know the model's math, and must learn it from something core promises to keep
true. `DecoderStructure` is that promise: a model that returns one from `structure()`
computes exactly `decoder_forward` below on it (a core test holds every architecture to
it), so a runner reads weights and shapes from these fields, never from a model's
internals, and a model that changes its math returns None instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from octavo.layers.linear import Linear
from octavo.layers.norm import RMSNorm
from octavo.platform import AttentionSpec


@dataclass(frozen=True)
class DecoderLayerStructure:
    """One layer: x -> h = input_norm(x + residual); attention; post_norm; SiLU-gated MLP."""

    input_norm: RMSNorm  # .weight [H], .eps
    qkv: Linear  # rows [q; k; v] of this rank's heads, bias optional
    q_norm: RMSNorm | None  # over each q head (Qwen3), or None
    k_norm: RMSNorm | None  # over each k head, or None
    attention: AttentionSpec
    o: Linear  # [H, q heads x head_dim]
    post_norm: RMSNorm  # [H]
    gate_up: Linear  # rows [gate; up]
    down: Linear  # [H, intermediate]


@dataclass(frozen=True)
class DecoderStructure:
    embed: torch.Tensor  # [vocab, H]
    layers: list[DecoderLayerStructure]
    norm: RMSNorm  # the final norm
    cos_sin_cache: torch.Tensor  # [max_positions, rot_dim] float32, neox rotary
    tp_size: int  # > 1: row-parallel outputs (o, down) are all-reduced over the ranks


def decoder_forward(
    structure: DecoderStructure,
    platform: Any,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list,
    meta: Any,
) -> torch.Tensor:
    """The structure's semantics, with the platform's parts: hidden states after the final
    norm for every input token (what the model's forward returns)."""
    ops, comm = platform.ops, platform.communicator
    x = structure.embed.index_select(0, input_ids)
    residual = None
    for layer, kv in zip(structure.layers, kv_caches):
        if residual is None:
            residual, h = x, ops.rms_norm(x, layer.input_norm.weight, layer.input_norm.eps)
        else:
            h, residual = ops.rms_norm(x, layer.input_norm.weight, layer.input_norm.eps, residual)
        spec = layer.attention
        t, q_size, kv_size = h.shape[0], spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        q, k, v = layer.qkv(h).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(t, spec.num_heads, spec.head_dim)
        k = k.reshape(t, spec.num_kv_heads, spec.head_dim)
        v = v.reshape(t, spec.num_kv_heads, spec.head_dim)
        if layer.q_norm is not None:
            q = ops.rms_norm(q, layer.q_norm.weight, layer.q_norm.eps)
        if layer.k_norm is not None:
            k = ops.rms_norm(k, layer.k_norm.weight, layer.k_norm.eps)
        q, k = ops.rotary(q, k, positions, structure.cos_sin_cache)
        o = platform.attention.forward(q, k, v, kv, meta, spec)
        h = comm.all_reduce(layer.o(o.reshape(t, q_size)))
        h, residual = ops.rms_norm(h, layer.post_norm.weight, layer.post_norm.eps, residual)
        x = comm.all_reduce(layer.down(ops.silu_and_mul(layer.gate_up(h))))
    out, _ = ops.rms_norm(x, structure.norm.weight, structure.norm.eps, residual)
    return out
