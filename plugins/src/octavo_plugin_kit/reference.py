"""The reference implementation of every kernel hook, in plain torch.

Each op is written to be obviously right, not fast: loops over requests and tokens,
explicit masks and formulas, every computation in float32. Results come back in the
input's dtype, as the contract asks of a platform; pass float32 inputs to get an
unrounded reference (the conformance suite does).

Semantics follow `octavo.platform.interface` (module docstring and `Platform`).
"""

from __future__ import annotations

import torch

from octavo.platform import API_VERSION, AttentionBackend, AttentionMetadata, Availability, Platform
from octavo_plugin_kit.inputs import make_attention_metadata  # noqa: F401  (re-exported: batches go with the ops)


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
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Paged varlen causal GQA attention; q: [T, num_heads, head_dim] -> [T, num_heads, head_dim].

    Request i's queries are the last q_len_i of its seq_len_i positions; query j sits at
    absolute position seq_len_i - q_len_i + j and sees positions p with p <= it and,
    with a sliding window W, p > it - W.
    """
    num_heads, num_kv_heads = q.shape[1], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    qsl = meta.query_start_loc_cpu or meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens_cpu or meta.seq_lens.tolist()
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for i, seq_len in enumerate(seq_lens):
        start, end = qsl[i], qsl[i + 1]
        k, v = _gather_context(kv_cache, meta.block_tables[i], seq_len)  # [S, num_kv_heads, D]
        k, v = k.to(q.device), v.to(q.device)
        # query head h = kv_head * group + g reads KV head h // group = kv_head
        qi = q[start:end].float().unflatten(1, (num_kv_heads, group))  # [L, num_kv_heads, group, D]
        scores = torch.einsum("lkgd,skd->kgls", qi, k) * scale
        q_pos = torch.arange(seq_len - (end - start), seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        visible = k_pos <= q_pos  # [L, S]
        if sliding_window is not None:
            visible &= k_pos > q_pos - sliding_window
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        out[start:end] = torch.einsum("kgls,skd->lkgd", probs, v).flatten(1, 2)
    return out.to(q.dtype)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim. With `residual`, x is first
    replaced by x + residual and (normed, x + residual) is returned."""
    xf = x.float()
    if residual is not None:
        xf = xf + residual.float()
    normed = xf / torch.sqrt((xf * xf).mean(dim=-1, keepdim=True) + eps) * weight.float()
    if residual is None:
        return normed.to(x.dtype)
    return normed.to(x.dtype), xf.to(x.dtype)


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox (rotate-half) rotary embedding of the first rot_dim features of each head.

    cos_sin_cache[p] = cat(cos(p * f), sin(p * f)) over the rot_dim / 2 frequencies f;
    feature pairs (i, i + rot_dim / 2) rotate by angle p * f_i; features past rot_dim
    pass through (partial rotary).
    """
    rot_dim = cos_sin_cache.shape[-1]
    half = rot_dim // 2
    table = cos_sin_cache.float()[positions.long()]  # [T, rot_dim]
    cos, sin = table[:, None, :half], table[:, None, half:]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        out = x.float().clone()
        x1, x2 = out[..., :half].clone(), out[..., half:rot_dim].clone()
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half:rot_dim] = x2 * cos + x1 * sin
        return out.to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] -> silu(gate) * up with gate = x[..., :d], up = x[..., d:]."""
    d = x.shape[-1] // 2
    gate, up = x[..., :d].float(), x[..., d:].float()
    return (gate * torch.sigmoid(gate) * up).to(x.dtype)


def sample_cdf(logits: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
    """For `Platform.sample`: each row's cumulative distribution, float64 [S, V], of
    softmax(logits / t). Token k is the right draw at u when cdf[k - 1] <= u < cdf[k]
    (sums in another order move those edges by rounding only)."""
    x = logits.double()
    if temperatures is not None:
        x = x / temperatures.double().unsqueeze(1)
    return torch.softmax(x, dim=-1).cumsum(dim=-1)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + b, with w stored [out, in] as in checkpoints."""
    y = x.float() @ w.float().T
    if b is not None:
        y = y + b.float()
    return y.to(x.dtype)


class ReferenceAttention(AttentionBackend):
    """The default KV layout and the reference attention, for any block and head size."""

    def write_kv(self, k, v, kv_cache, slot_mapping) -> None:
        write_kv(k, v, kv_cache, slot_mapping)

    def attend(self, q, kv_cache, meta, scale, sliding_window=None):
        return attend(q, kv_cache, meta, scale, sliding_window)


class ReferencePlatform(Platform):
    """Every kernel from this module. Not registered as a plugin: tests and the plugin
    template use it directly, and it is far too slow to serve with."""

    name = "reference"
    api_version = API_VERSION
    device_type = "cpu"
    package = "octavo-plugin-kit"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(score=1, reason="slow reference ops, for tests")

    def make_attention_backend(self) -> ReferenceAttention:
        return ReferenceAttention()

    def linear(self, x, weight, bias=None):
        return linear(x, weight, bias)

    def rms_norm(self, x, weight, eps, residual=None):
        return rms_norm(x, weight, eps, residual)

    def rotary(self, q, k, positions, cos_sin_cache):
        return rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x):
        return silu_and_mul(x)
