"""Paged attention for static-shape steps, in torch ops: every shape fixed by the step's
buckets, nothing read back to the host, so a whole step traces into one graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.platform import AttentionBackend, AttentionSpec, ForwardBatch, KVCacheSpec


@dataclass(frozen=True)
class _StaticMeta:
    """A step as `StaticAttention` reads it: device tensors only, every shape a bucket's."""

    slot_mapping: torch.Tensor  # int64 [T], -1 = padding
    block_tables: torch.Tensor  # int64 [B, W]
    token_req: torch.Tensor  # int64 [T]: the request of each token (clamped for padding)
    query_pos: torch.Tensor  # int64 [T]: its absolute position
    context_len: torch.Tensor  # int64 [T]: its request's seq_len, 0 for padding tokens


class StaticAttention(AttentionBackend):
    """Paged attention with every shape fixed by the step's buckets and nothing read back to
    the host: each token finds its request with a search over query_start_loc, gathers that
    request's whole (bucket-wide) block table and masks what it must not see.

    The cache has one block past those core asked for: padding tokens (slot -1) write there,
    so storing a step's K/V stays one scatter of a fixed shape. No table points at it."""

    def allocate(self, layer: AttentionSpec, spec: KVCacheSpec, num_blocks: int) -> torch.Tensor:
        shape = (2, num_blocks + 1, spec.block_size, layer.num_kv_heads, layer.head_dim)
        return torch.zeros(shape, dtype=spec.dtype, device=self.device.torch_device())

    def build_metadata(self, batch: ForwardBatch) -> _StaticMeta:
        qsl = batch.query_start_loc.long()
        seq_lens = batch.seq_lens.long()
        num_reqs = seq_lens.shape[0]
        t = torch.arange(batch.slot_mapping.shape[0], device=qsl.device)
        # request i owns tokens qsl[i] <= t < qsl[i + 1]; padding requests own none, and
        # padding tokens (t >= qsl[-1], the real token count) land past the last request
        ends = qsl[1:]
        req = torch.searchsorted(ends, t, right=True)
        real = req < num_reqs
        req = req.clamp(max=num_reqs - 1)
        # the queries are the last q_len positions of the context: t sits ends[req] - t before its end
        query_pos = seq_lens[req] - (ends[req] - t)
        return _StaticMeta(
            slot_mapping=batch.slot_mapping,
            block_tables=batch.block_tables.long(),
            token_req=req,
            query_pos=torch.where(real, query_pos, 0),
            context_len=torch.where(real, seq_lens[req], 0),
        )

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: _StaticMeta) -> None:
        num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2]
        slots = meta.slot_mapping
        trash = (num_blocks - 1) * block_size + torch.arange(slots.shape[0], device=slots.device) % block_size
        slots = torch.where(slots >= 0, slots, trash)
        index = (slots // block_size, slots % block_size)
        kv_cache[0].index_put_(index, k.to(kv_cache.dtype))
        kv_cache[1].index_put_(index, v.to(kv_cache.dtype))

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: _StaticMeta, layer: AttentionSpec) -> torch.Tensor:
        num_tokens, num_heads, head_dim = q.shape
        num_kv_heads = kv_cache.shape[3]
        # each token's request's blocks, in table order: [T, W * block_size, num_kv_heads, D]
        blocks = meta.block_tables[meta.token_req]
        k = kv_cache[0][blocks].flatten(1, 2).float()
        v = kv_cache[1][blocks].flatten(1, 2).float()
        k_pos = torch.arange(k.shape[1], device=q.device)[None, :]
        q_pos = meta.query_pos[:, None]
        visible = k_pos < meta.context_len[:, None]  # [T, S]; none for padding tokens
        if layer.causal:
            visible &= k_pos <= q_pos
        if layer.sliding_window is not None:
            visible &= k_pos > q_pos - layer.sliding_window
        # slots past a context (a padded table reads block 0, a new block holds stale KV) may
        # hold anything, even inf or NaN: their scores are masked below, and their values
        # must not reach the sum as 0 * inf
        v = torch.where(visible[:, :, None, None], v, 0.0)
        qg = q.float().unflatten(1, (num_kv_heads, num_heads // num_kv_heads))  # head h reads KV head h // group
        scores = torch.einsum("tkgd,tskd->tkgs", qg, k) * layer.scale
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        # a row that sees nothing (padding) has max -inf: shift by 0 instead, so it sums to 0, not NaN
        top = scores.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).min)
        weights = torch.exp(scores - top)
        probs = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
        out = torch.einsum("tkgs,tskd->tkgd", probs, v)
        return out.reshape(num_tokens, num_heads, head_dim).to(q.dtype)
