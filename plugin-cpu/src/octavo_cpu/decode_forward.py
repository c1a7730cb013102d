"""A decode step of a Llama-family model in one native call (`CpuPlatform.run_model`).

Single-stream decoding of a small model spends a third of each step in Python: about a dozen
kernel calls per layer, each with its wrapper's checks and allocations. For steps where every
request decodes one token, `_C.decode_step` runs every layer's sequence of native kernels (the
same kernels, arguments and rounding as the op-by-op path in octavo.models.llama, which
CpuPlatform.linear picks, `platform.linear_path`: the packed bf16 GEMM where it runs, else the
GEMV up to 8 rows) and the final norm in C++. Everything else, and any model, dtype or
configuration this does not cover (rows the op-by-op path gives torch's linear), goes op by op
as before (`run_decode` returns None).

The per-layer weight pointers are gathered once per model and KV cache into a "plan" (the
GEMM's packed weights at the first step that needs them); one scratch buffer, grown to the
largest batch seen, holds the activations, so a step allocates only its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from octavo_cpu import _native, gemm
from octavo_cpu.platform import linear_path

_PLAN_COLS = 13  # csrc/ops.cpp PlanCol
_PACKED_COLS = (9, 10, 11, 12)  # kQkvP, kOP, kGateUpP, kDownP: packed qkv, o, gate_up, down


@dataclass
class _Plan:
    table: torch.Tensor  # int64 [layers, _PLAN_COLS]
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    inter: int
    eps: float
    scale: float
    dtype: torch.dtype
    kv_dtype: torch.dtype
    kv_strides: tuple
    block_size: int
    weights: list  # per layer: (qkv, o, gate_up, down), to pack for the GEMM
    packed: list | None = None  # the packed copies once made (kept alive here: the table points at them)
    scratch: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def _eligible(model, kv_caches) -> bool:
    """The plain Llama layer structure on one rank, one float dtype throughout."""
    from octavo.layers.attention import Attention
    from octavo.models.llama import MLP, DecoderLayer, LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM) or type(model).forward is not LlamaForCausalLM.forward:
        return False
    if model.tp_size != 1 or model.qk_norm or not _native.available():
        return False
    dtype = model.embed_tokens.dtype
    if dtype not in _native.SUPPORTED_DTYPES or model.cos_sin_cache.dtype != torch.float32:
        return False
    for layer, kv in zip(model.layers, kv_caches):
        if type(layer) is not DecoderLayer or type(layer.mlp) is not MLP or type(layer.self_attn) is not Attention:
            return False
        a = layer.self_attn
        if a.qk_norm_eps is not None or kv.dtype not in _native.SUPPORTED_DTYPES or kv.stride(-1) != 1:
            return False
        tensors = [
            layer.input_layernorm,
            layer.post_attention_layernorm,
            a.qkv_proj,
            a.o_proj,
            layer.mlp.gate_up_proj,
            layer.mlp.down_proj,
        ] + ([a.qkv_bias] if a.qkv_bias is not None else [])
        if any(t.dtype != dtype or not t.is_contiguous() for t in tensors):
            return False
    return model.norm.dtype == dtype and len(kv_caches) == len(model.layers)


def _build_plan(model, kv_caches) -> _Plan | None:
    if not _eligible(model, kv_caches):
        return None
    rows = []
    for layer, kv in zip(model.layers, kv_caches):
        a = layer.self_attn
        rows.append(
            [
                layer.input_layernorm.data_ptr(),
                a.qkv_proj.data_ptr(),
                a.qkv_bias.data_ptr() if a.qkv_bias is not None else 0,
                a.o_proj.data_ptr(),
                layer.post_attention_layernorm.data_ptr(),
                layer.mlp.gate_up_proj.data_ptr(),
                layer.mlp.down_proj.data_ptr(),
                kv.data_ptr(),
                int(a.sliding_window or 0),
                0,
                0,
                0,
                0,
            ]
        )
    a0 = model.layers[0].self_attn
    kv0 = kv_caches[0]
    if any(kv.shape != kv0.shape or kv.stride() != kv0.stride() or kv.dtype != kv0.dtype for kv in kv_caches):
        return None
    if any(layer.self_attn.scale != a0.scale for layer in model.layers):
        return None
    return _Plan(
        table=torch.tensor(rows, dtype=torch.int64),
        hidden=model.config.hidden_size,
        num_heads=a0.num_heads,
        num_kv_heads=a0.num_kv_heads,
        head_dim=a0.head_dim,
        inter=model.layers[0].mlp.intermediate,
        eps=float(model.config.rms_norm_eps),
        scale=float(a0.scale),
        dtype=model.embed_tokens.dtype,
        kv_dtype=kv0.dtype,
        kv_strides=tuple(kv0.stride()[:4]),
        block_size=kv0.shape[2],
        weights=[
            (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
            for layer in model.layers
        ],
    )


def _pack(plan: _Plan) -> None:
    """Put the GEMM's packed weights into the plan's table, once (gemm.packed: the same
    copies CpuPlatform.linear uses)."""
    if plan.packed is None:
        plan.packed = [[gemm.packed(w) for w in ws] for ws in plan.weights]
        for i, ps in enumerate(plan.packed):
            for col, p in zip(_PACKED_COLS, ps):
                plan.table[i, col] = p.data_ptr()


def _plan(model, kv_caches) -> _Plan | None:
    """The model's plan for these caches (None: not covered), built on first use. Weights do
    not move after loading; a new KV cache (a new engine) makes a new plan."""
    key = (id(model), tuple(kv.data_ptr() for kv in kv_caches))
    cached = getattr(model, "_octavo_cpu_decode_plan", None)
    if cached is None or cached[0] != key:
        cached = model._octavo_cpu_decode_plan = (key, _build_plan(model, kv_caches))
    return cached[1]


def run_decode(model, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list, meta) -> torch.Tensor | None:
    """Hidden states of a decode-only step, or None when the step or model is not covered."""
    m = input_ids.shape[0]
    if m == 0 or meta.num_decodes != m or meta.num_seqs != m:
        return None
    plan = _plan(model, kv_caches)
    if plan is None:
        return None
    path = linear_path(plan.dtype, m)  # each step: gemm.ENABLED may change (A/B runs)
    if path is None:
        return None
    if path == "gemm":
        _pack(plan)
    x = model.embed_tokens.index_select(0, input_ids)
    out = torch.empty_like(x)
    q, kv = plan.num_heads * plan.head_dim, plan.num_kv_heads * plan.head_dim
    need = m * (3 * plan.hidden + 2 * q + 2 * kv + 3 * plan.inter)
    if plan.scratch.numel() < need:
        plan.scratch = torch.empty(need, dtype=plan.dtype)
    scratch = plan.scratch
    pos = (
        positions
        if positions.dtype == torch.int64 and positions.is_contiguous()
        else positions.to(torch.int64).contiguous()
    )
    slots = (
        meta.slot_mapping
        if meta.slot_mapping.dtype == torch.int64 and meta.slot_mapping.is_contiguous()
        else meta.slot_mapping.to(torch.int64).contiguous()
    )
    bt, seq_lens, qsl = (
        _native._int32(meta.block_tables),
        _native._int32(meta.seq_lens),
        _native._int32(meta.query_start_loc),
    )
    cs = model.cos_sin_cache
    code = _native._code(x, "x")
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
        code,
        _native._code(kv_caches[0], "kv_cache"),
        plan.block_size,
        _native._ATTN_KERNELS[_native.ATTENTION_KERNEL],
        torch.get_num_threads(),
        *plan.kv_strides,
        model.norm.data_ptr(),
        x.data_ptr(),
        out.data_ptr(),
        scratch.data_ptr(),
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
