"""The reference implementation of every kernel of the contract, in plain torch.

Each op is written to be obviously right, not fast: loops over requests and tokens,
explicit masks and formulas, every computation in float32. Results come back in the
input's dtype, as the contract asks of a platform; pass float32 inputs to get an
unrounded reference (the conformance suite does).

The fused ops (`rms_norm`, `rms_norm_f32`, `rotary`, `silu_and_mul`, `gelu_tanh_and_mul`) are
defined once, in core's `octavo.platform.ops` (they are also the defaults of `FusedOps`), and
re-exported here beside the attention, KV-cache and GEMM references, which are defined here. Semantics
follow `octavo.platform.attention` (module docstring) and the part classes.
"""

from __future__ import annotations

import torch

from octavo.platform import AttentionBackend, AttentionSpec, Availability, ForwardBatch, LinearMethod, Platform
from octavo.platform.ops import gelu_tanh_and_mul, rms_norm, rms_norm_f32, rotary, silu_and_mul
from octavo_plugin_kit.inputs import make_forward_batch

__all__ = [
    "ReferenceAttention",
    "ReferenceLinearMethod",
    "ReferencePlatform",
    "apply_token_bitmask",
    "attend",
    "attend_latent",
    "gelu_tanh_and_mul",
    "linear",
    "lora_expand",
    "lora_shrink",
    "make_forward_batch",
    "rms_norm",
    "rms_norm_f32",
    "rotary",
    "sample_cdf",
    "silu_and_mul",
    "write_kv",
    "write_latent",
]


def write_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store token t's k/v ([T, num_kv_heads, head_dim]) at slot `slot_mapping[t]` of a
    [2, num_blocks, block_size, num_kv_heads, head_dim] cache; slot -1 is padding."""
    block_size = kv_cache.shape[2]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        block, offset = divmod(slot, block_size)
        kv_cache[0, block, offset] = k[t].to(kv_cache.dtype)
        kv_cache[1, block, offset] = v[t].to(kv_cache.dtype)


def _gather_context(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int):
    """K and V of positions 0..seq_len-1 of one request, read slot by slot through its table."""
    block_size = kv_cache.shape[2]
    pos = torch.arange(seq_len, device=kv_cache.device)
    blocks = block_table.to(device=kv_cache.device, dtype=torch.long)[pos // block_size]
    return kv_cache[0, blocks, pos % block_size].float(), kv_cache[1, blocks, pos % block_size].float()


def attend(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: ForwardBatch,
    scale: float,
    sliding_window: int | None = None,
    causal: bool = True,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """Paged varlen GQA attention; q: [T, num_heads, head_dim] -> [T, num_heads, head_dim].

    Request i's queries are the last q_len_i of its seq_len_i positions; query j sits at
    absolute position seq_len_i - q_len_i + j and, causal, sees positions p with p <= it and,
    with a sliding window W, p > it - W; not causal, it sees all seq_len_i positions. A
    request with q_len 0 (padding) has no queries; rows past the last request's (padding
    tokens) are left zero. With `logits_soft_cap` c, each score s becomes c * tanh(s / c).
    """
    num_heads, num_kv_heads = q.shape[1], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    qsl = meta.query_start_loc_cpu or meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens_cpu or meta.seq_lens.tolist()
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for i, seq_len in enumerate(seq_lens):
        start, end = qsl[i], qsl[i + 1]
        if end == start:
            continue
        k, v = _gather_context(kv_cache, meta.block_tables[i], seq_len)  # [S, num_kv_heads, D]
        k, v = k.to(q.device), v.to(q.device)
        # query head h = kv_head * group + g reads KV head h // group = kv_head
        qi = q[start:end].float().unflatten(1, (num_kv_heads, group))  # [L, num_kv_heads, group, D]
        scores = torch.einsum("lkgd,skd->kgls", qi, k) * scale
        if logits_soft_cap is not None:
            scores = torch.tanh(scores / logits_soft_cap) * logits_soft_cap
        q_pos = torch.arange(seq_len - (end - start), seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        visible = k_pos <= q_pos if causal else torch.ones_like(k_pos <= q_pos)  # [L, S]
        if sliding_window is not None:
            visible &= k_pos > q_pos - sliding_window
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        out[start:end] = torch.einsum("kgls,skd->lkgd", probs, v).flatten(1, 2)
    return out.to(q.dtype)


def write_latent(entry: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store token t's latent entry ([T, head_dim]) at slot `slot_mapping[t]` of a
    [num_blocks, block_size, head_dim] cache; slot -1 is padding."""
    block_size = kv_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            block, offset = divmod(slot, block_size)
            kv_cache[block, offset] = entry[t].to(kv_cache.dtype)


def attend_latent(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: ForwardBatch,
    scale: float,
    latent_dim: int,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Multi-head latent attention over a [num_blocks, block_size, head_dim] cache, causal:
    q [T, num_heads, head_dim] -> [T, num_heads, latent_dim]. Every head scores against the
    whole cached entry of each visible position (latent and rotary key) and sums the entries'
    first `latent_dim` features (the latent) with those weights; positions as in `attend`."""
    # the entry is the one key and value head of multi-query attention; the values are its latent part
    entries = kv_cache.unsqueeze(0).expand(2, *kv_cache.shape).unsqueeze(3)
    out = attend(q, entries, meta, scale, sliding_window)
    return out[..., :latent_dim]


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """For `FusedOps.lora_shrink`: token by token, h[t, n] = a[slots[t], n] @ x[t] in float32,
    rounded to x's dtype (zeros for slot -1); x [T, I], a [S, N, R, I] -> [T, N, R]."""
    h = torch.zeros(x.shape[0], a.shape[1], a.shape[2], dtype=torch.float32)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            h[t] = a[slot].float().cpu() @ x[t].float().cpu()
    return h.to(x.dtype)


def lora_expand(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes) -> torch.Tensor:
    """For `FusedOps.lora_expand`: a copy of y [T, O] where, token by token and slice by slice,
    d = h[t, n] @ b[slots[t], :, columns of slice n] (b [S, R, O]) in float32 is rounded to y's
    dtype and added to y's columns, the sum rounded to y's dtype."""
    out = y.cpu().clone()
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        start = 0
        for n, size in enumerate(slice_sizes):
            d = (h[t, n].float().cpu() @ b[slot, :, start : start + size].float().cpu()).to(y.dtype)
            out[t, start : start + size] = (out[t, start : start + size].float() + d.float()).to(y.dtype)
            start += size
    return out


def sample_cdf(logits: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
    """For `FusedOps.sample`: each row's cumulative distribution, float64 [S, V], of
    softmax(logits / t). Token k is the right draw at u when cdf[k - 1] <= u < cdf[k]
    (sums in another order move those edges by rounding only)."""
    x = logits.double()
    if temperatures is not None:
        x = x / temperatures.double().unsqueeze(1)
    return torch.softmax(x, dim=-1).cumsum(dim=-1)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """For `FusedOps.apply_token_bitmask`: a copy of logits [S, V] with -inf wherever the
    token's bit is clear, bit by bit (token j: bit j % 32 of word j // 32 of its row, int32
    words read as unsigned)."""
    out = logits.float().clone()
    words = bitmask.cpu().tolist()
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            if not (words[i][j // 32] & 0xFFFFFFFF) >> (j % 32) & 1:
                out[i, j] = float("-inf")
    return out


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + b, with w stored [out, in] as in checkpoints."""
    y = x.float() @ w.float().T
    if b is not None:
        y = y + b.float()
    return y.to(x.dtype)


class ReferenceAttention(AttentionBackend):
    """The default KV layout and the reference attention, for any block and head size."""

    supports_logits_soft_cap = True
    supports_mla = True

    def write_kv(self, k, v, kv_cache, meta) -> None:
        write_kv(k, v, kv_cache, meta.slot_mapping)

    def attend(self, q, kv_cache, meta, layer: AttentionSpec):
        return attend(q, kv_cache, meta, layer.scale, layer.sliding_window, layer.causal, layer.logits_soft_cap)

    def write_latent(self, entry, kv_cache, meta) -> None:
        write_latent(entry, kv_cache, meta.slot_mapping)

    def attend_latent(self, q, kv_cache, meta, layer: AttentionSpec):
        assert layer.latent_dim is not None, "attend_latent serves latent layers only"
        return attend_latent(q, kv_cache, meta, layer.scale, layer.latent_dim, layer.sliding_window)


class ReferenceLinearMethod(LinearMethod):
    def apply(self, layer, x):
        return linear(x, layer.weight, layer.bias)


class ReferencePlatform(Platform):
    """Every kernel from this module (the fused ops are core's defaults, the same
    definitions). Not registered as a plugin: tests and the plugin template use it
    directly, and it is far too slow to serve with."""

    name = "reference"
    api_version = "2.3"
    package = "octavo-plugin-kit"
    attention_cls = ReferenceAttention
    linear_cls = ReferenceLinearMethod

    @classmethod
    def availability(cls) -> Availability:
        return Availability(score=1, reason="slow reference ops, for tests")
