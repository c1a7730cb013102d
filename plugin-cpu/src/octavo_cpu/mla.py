"""Multi-head latent attention (DeepSeek's MLA) on the CPU, over the latent cache.

The cache of a latent layer is `[num_blocks, block_size, head_dim]`: one entry per token (the
latent, then the rotary key), shared by every head. That makes each request's attention two
GEMMs whose M dimension is all its query rows times all heads: scores = Q [L*H, D] @ E^T and
out = P @ E[:, :latent_dim]; no per-head loop, and each entry is read once per request.
Decodes (one query row each) go in one batched matmul over the requests padded to the
longest context. Everything in float32, rounded once at the end: bf16 scores over 576
features were off the reference by more than the contract's tolerance.

Torch, not the native extension: measured against the expanded path (per-head K/V made from
the latent, then attention) it is the faster of the two at every shape tried
(benchmarks/mla_cpu.py, docs/mla.md).
"""

from __future__ import annotations

import numpy as np
import torch

from octavo.platform import AttentionSpec, ForwardBatch, KVCacheSpec


def allocate(spec: KVCacheSpec, layer: AttentionSpec, num_blocks: int) -> torch.Tensor:
    # calloc-backed, as the other layers' caches: zero pages are mapped on first touch
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    raw = np.zeros((num_blocks, spec.block_size, layer.head_dim * itemsize), dtype=np.uint8)
    return torch.from_numpy(raw).view(spec.dtype)


def write_latent(entry: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor) -> None:
    keep = slots >= 0  # slot -1 marks padding, which is not stored
    if not bool(keep.all()):
        entry, slots = entry[keep], slots[keep]
    kv_cache.view(-1, kv_cache.shape[-1])[slots] = entry.to(kv_cache.dtype)


def attend_latent(q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch, layer: AttentionSpec) -> torch.Tensor:
    assert layer.latent_dim is not None
    t, h, _ = q.shape
    out = torch.zeros(t, h, layer.latent_dim, dtype=q.dtype)
    qsl, seq_lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
    decodes = [i for i in range(meta.num_reqs) if qsl[i + 1] - qsl[i] == 1]
    if decodes:
        rows = torch.tensor([qsl[i] for i in decodes])
        out[rows] = _decodes(q[rows], kv_cache, meta, decodes, layer)
    for i in range(meta.num_reqs):
        s, e = qsl[i], qsl[i + 1]
        if e - s > 1:
            out[s:e] = _prefill(q[s:e], _entries(kv_cache, meta.block_tables[i], seq_lens[i]), layer)
    return out


def _entries(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    bs = kv_cache.shape[1]
    nb = -(-seq_len // bs)
    return kv_cache[block_table[:nb].long()].reshape(nb * bs, -1)[:seq_len]


def _prefill(q: torch.Tensor, entries: torch.Tensor, layer: AttentionSpec) -> torch.Tensor:
    """One request's n query rows (a prompt or a chunk at the end of its context)."""
    (n, h, d), s = q.shape, entries.shape[0]
    e = entries.float()
    scores = (q.reshape(n * h, d).float() @ e.T).view(n, h, s) * layer.scale
    qpos = torch.arange(s - n, s).view(n, 1, 1)
    kpos = torch.arange(s).view(1, 1, s)
    visible = kpos <= qpos
    if layer.sliding_window is not None:
        visible &= kpos > qpos - layer.sliding_window
    probs = scores.masked_fill_(~visible, float("-inf")).softmax(dim=-1)
    return (probs.view(n * h, s) @ e[:, : layer.latent_dim]).view(n, h, -1).to(q.dtype)


def _decodes(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch, reqs: list[int], layer: AttentionSpec
) -> torch.Tensor:
    """Requests `reqs`, one query row each (q: [n, H, D]), padded to the longest context."""
    bs = kv_cache.shape[1]
    lens = [meta.seq_lens_cpu[i] for i in reqs]
    nb = -(-max(lens) // bs)
    tables = meta.block_tables[torch.tensor(reqs), :nb].long()
    e = kv_cache[tables].reshape(len(reqs), nb * bs, -1).float()  # [n, S, D]
    scores = torch.bmm(q.float(), e.transpose(1, 2)) * layer.scale  # [n, H, S]
    length = torch.tensor(lens).view(-1, 1, 1)
    kpos = torch.arange(nb * bs).view(1, 1, -1)
    visible = kpos < length
    if layer.sliding_window is not None:
        visible &= kpos >= length - layer.sliding_window
    probs = scores.masked_fill_(~visible, float("-inf")).softmax(dim=-1)
    return torch.bmm(probs, e[:, :, : layer.latent_dim]).to(q.dtype)
