"""A decode step of a dense decoder in one native call (`CpuModelRunner.forward`).

Single-stream decoding of a small model spends a third of each step in Python: about a dozen
kernel calls per layer, each with its wrapper's checks and allocations. For steps where every
request decodes one token, `_C.decode_step` runs every layer's sequence of native kernels and
the final norm in C++: the computation core's `DecoderStructure` defines (`decoder_forward`),
on the same kernels, arguments and rounding as the op-by-op path over CpuOps, CpuAttention and
CpuLinearMethod, whose routing it follows (`linear.linear_path`: the packed bf16 GEMM where the
weights are packed, else the GEMV up to 8 rows). Whatever this does not cover goes op by op:
a structure it cannot run (`build_plan` returns None) or a step whose rows the op-by-op path
gives torch's linear (`run_decode` returns None).

The plan holds what the C++ step reads: one row of pointers per layer (weights, packed
weights, KV cache, window) and the shapes, gathered once from the structure and the
allocated caches, plus one scratch buffer for the activations, grown to the largest batch
seen, so a step allocates only its output. The pointers stay valid while the runner that
holds the plan holds the model and the caches (which it allocates once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from octavo.platform import ForwardBatch
from octavo_cpu import _native
from octavo_cpu.linear import CpuLinearMethod, linear_path

logger = logging.getLogger("octavo")

_PLAN_COLS = 13  # csrc/ops.cpp PlanCol: kInNorm, kQkvW, kQkvB, kOW, kPostNorm, kGateUpW, kDownW,
# kKvCache, kWindow, then the packed qkv, o, gate_up, down (kQkvP, kOP, kGateUpP, kDownP)


@dataclass
class DecodePlan:
    table: torch.Tensor  # int64 [layers, _PLAN_COLS]
    embed: torch.Tensor  # [vocab, hidden]
    final_norm: torch.Tensor  # [hidden]
    cos_sin_cache: torch.Tensor  # float32 [max_positions, rot_dim]
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    inter: int
    eps: float
    scale: float
    dtype: torch.dtype
    kv_code: int  # the cache's dtype, as the kernels number dtypes
    kv_strides: tuple
    block_size: int
    packed: bool  # the layers' linears run the packed GEMM (else the GEMV)
    scratch: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def _linears(layer) -> tuple:
    return layer.qkv, layer.o, layer.gate_up, layer.down


def _why_not(structure, kv_caches: list) -> str | None:
    """Why the C++ step cannot run this structure over these caches (None: it can)."""
    if not _native.available():
        return "no native kernels"
    if structure.tp_size != 1:
        return "tensor parallelism (its all-reduces are not in the C++ step)"
    dtype = structure.embed.dtype
    if dtype not in _native.SUPPORTED_DTYPES:
        return f"dtype {dtype}"
    cs = structure.cos_sin_cache
    if cs.dtype != torch.float32 or cs.stride(-1) != 1:
        return "a rotary table that is not float32 rows"
    if len(kv_caches) != len(structure.layers) or not structure.layers:
        return "one KV cache per layer"
    first, kv0 = structure.layers[0], kv_caches[0]
    a0 = first.attention
    hidden = structure.embed.shape[1]
    q, kv = a0.num_heads * a0.head_dim, a0.num_kv_heads * a0.head_dim
    inter = first.down.in_features
    if not all(isinstance(lin.method, CpuLinearMethod) for layer in structure.layers for lin in _linears(layer)):
        return "linears of another linear method"
    packed = first.qkv.packed_weight is not None
    if packed and dtype != torch.bfloat16:
        return "packed weights of a model that is not bf16"
    for layer, cache in zip(structure.layers, kv_caches):
        a = layer.attention
        if layer.q_norm is not None or layer.k_norm is not None:
            return "per-head q/k norms"
        if not a.causal or getattr(a, "logits_soft_cap", None) is not None:  # soft-capping: contract 2.1
            return "non-causal or soft-capped attention"
        if (a.num_heads, a.num_kv_heads, a.head_dim, a.scale) != (a0.num_heads, a0.num_kv_heads, a0.head_dim, a0.scale):
            return "layers of different attention shapes"
        if cache.dtype != kv0.dtype or cache.shape != kv0.shape or cache.stride() != kv0.stride():
            return "KV caches of different layouts"
        if cache.dtype not in _native.SUPPORTED_DTYPES or cache.stride(-1) != 1:
            return f"a KV cache of {cache.dtype} or a strided head_dim"
        shapes = ((hidden, q + 2 * kv), (q, hidden), (hidden, 2 * inter), (inter, hidden))
        for lin, (n_in, n_out) in zip(_linears(layer), shapes):
            if (lin.in_features, lin.out_features) != (n_in, n_out):
                return "linears of other shapes"
            if (lin.packed_weight is not None) != packed:
                return "packed and unpacked linears mixed"
            if not packed and (lin.weight.dtype != dtype or not lin.weight.is_contiguous()):
                return "a weight of another dtype or layout"
            if lin.bias is not None and (lin is not layer.qkv or lin.bias.dtype != dtype):
                return "a bias the C++ step does not add"
        for norm in (layer.input_norm, layer.post_norm):
            if norm.weight.dtype != dtype or not norm.weight.is_contiguous() or norm.eps != structure.norm.eps:
                return "norms of another dtype or eps"
    if structure.norm.weight.dtype != dtype:
        return "a final norm of another dtype"
    return None


def build_plan(structure, kv_caches: list) -> DecodePlan | None:
    """The plan for a `DecoderStructure` over its layers' allocated caches, or None when the
    C++ step does not cover it (the runner then runs every step op by op)."""
    why = "the model describes no DecoderStructure" if structure is None else _why_not(structure, kv_caches)
    if why is not None:
        logger.info("decode steps run op by op: the one-call decode step does not cover %s", why)
        return None
    rows = []
    for layer, kv in zip(structure.layers, kv_caches):
        lins = _linears(layer)
        weights = [0 if lin.weight is None else lin.weight.data_ptr() for lin in lins]
        packed = [0 if lin.packed_weight is None else lin.packed_weight.data_ptr() for lin in lins]
        bias = layer.qkv.bias
        rows.append(
            [
                layer.input_norm.weight.data_ptr(),
                weights[0],
                0 if bias is None else bias.data_ptr(),
                weights[1],
                layer.post_norm.weight.data_ptr(),
                weights[2],
                weights[3],
                kv.data_ptr(),
                int(layer.attention.sliding_window or 0),
                *packed,
            ]
        )
        assert len(rows[-1]) == _PLAN_COLS
    first, kv0 = structure.layers[0], kv_caches[0]
    a0 = first.attention
    return DecodePlan(
        table=torch.tensor(rows, dtype=torch.int64),
        embed=structure.embed,
        final_norm=structure.norm.weight,
        cos_sin_cache=structure.cos_sin_cache,
        hidden=structure.embed.shape[1],
        num_heads=a0.num_heads,
        num_kv_heads=a0.num_kv_heads,
        head_dim=a0.head_dim,
        inter=first.down.in_features,
        eps=float(structure.norm.eps),
        scale=float(a0.scale),
        dtype=structure.embed.dtype,
        kv_code=_native._code(kv0, "kv_cache"),
        kv_strides=tuple(kv0.stride()[:4]),
        block_size=kv0.shape[2],
        packed=first.qkv.packed_weight is not None,
    )


def run_decode(plan: DecodePlan, batch: ForwardBatch) -> torch.Tensor | None:
    """Hidden states of a decode-only step (every request one token), or None when the step's
    row count is not covered (the GEMV's rows exceeded: the op-by-op path runs torch's linear)."""
    m = batch.input_ids.shape[0]
    path = linear_path(plan.packed, plan.dtype, m)
    if path is None:
        return None
    x = plan.embed.index_select(0, batch.input_ids)
    out = torch.empty_like(x)
    q, kv = plan.num_heads * plan.head_dim, plan.num_kv_heads * plan.head_dim
    need = m * (3 * plan.hidden + 2 * q + 2 * kv + 3 * plan.inter)
    if plan.scratch.numel() < need:
        plan.scratch = torch.empty(need, dtype=plan.dtype)
    pos = batch.positions
    pos = pos if pos.dtype == torch.int64 and pos.is_contiguous() else pos.to(torch.int64).contiguous()
    slots = batch.slot_mapping
    slots = slots if slots.dtype == torch.int64 and slots.is_contiguous() else slots.to(torch.int64).contiguous()
    bt, seq_lens, qsl = (
        _native._int32(batch.block_tables),
        _native._int32(batch.seq_lens),
        _native._int32(batch.query_start_loc),
    )
    cs = plan.cos_sin_cache
    _native._C.decode_step(
        plan.table.data_ptr(),
        plan.table.shape[0],
        plan.hidden,
        plan.num_heads,
        plan.num_kv_heads,
        plan.head_dim,
        plan.inter,
        plan.eps,
        plan.scale,
        _native._code(x, "x"),
        plan.kv_code,
        plan.block_size,
        _native._ATTN_KERNELS[_native.ATTENTION_KERNEL],
        torch.get_num_threads(),
        *plan.kv_strides,
        plan.final_norm.data_ptr(),
        x.data_ptr(),
        out.data_ptr(),
        plan.scratch.data_ptr(),
        m,
        pos.data_ptr(),
        slots.data_ptr(),
        cs.data_ptr(),
        cs.stride(0),
        cs.shape[0],
        cs.shape[-1],
        bt.data_ptr(),
        bt.stride(0),
        seq_lens.data_ptr(),
        qsl.data_ptr(),
        m,
        path == "gemm",
    )
    return out
