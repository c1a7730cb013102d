"""Paged varlen attention on the CPU, and its KV cache.

The cache (`allocate`) is calloc-backed and stored head-major, handed out as a view of the
default layout (see `allocate`). The native kernels (csrc/, through `_native`) serve it
whenever q and the cache are float32 or bfloat16:

* attend: one native call for the whole batch, decodes and prefill chunks alike,
  parallel over (request, KV head, tile of 16 query tokens), long decodes split across
  threads when there are too few of those; each query-head group reads its K/V blocks
  once, online softmax, fp32 accumulation. On AVX-512 a blocked kernel takes 32 keys at
  a time (vdpbf16ps on bf16 where the CPU has it); docs/cpu.md has the details and
  figures. (The native prefill beat the torch path below by 1.4-3x on SmolLM2 shapes
  before the blocked kernel, so no row kind stays on it.)
* write_kv: a native scatter into the slots.

The kernels take non-causal layers too (encoders: BERT, XLM-R: every query sees its
request's whole context); without them those run on `_bidirectional`, a torch path
(explicit scores over each request's whole context). Layers with
attention logit soft-capping (Gemma 2) run on `_soft_capped`, a torch path that scores,
caps, masks and normalizes explicitly (SDPA has no cap): correct, not fast. Latent layers
(DeepSeek's MLA) have their own cache layout and kernels: octavo_cpu.mla.

The torch path below stays for what the native kernels do not cover: float16 (or any
other dtype), and a build without the extension (e.g. a source checkout never
installed). It gathers blocks through the table into a padded tensor and calls SDPA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from octavo.platform import AttentionBackend, AttentionSpec, Device, ForwardBatch, KVCacheSpec
from octavo_cpu import _native, mla


class CpuAttention(AttentionBackend):
    supports_logits_soft_cap = True  # through `_soft_capped` (torch)
    supports_mla = True  # through octavo_cpu.mla (torch)

    def __init__(self, device: Device, use_native: bool | None = None) -> None:
        super().__init__(device)
        # None = native when the extension imported
        self.use_native = _native.available() if use_native is None else use_native
        if self.use_native and not _native.available():
            raise RuntimeError(
                f"octavo-cpu's native kernels did not import: {_native.IMPORT_ERROR}. "
                "Reinstall the package (`pip install ./plugin-cpu`) to build them."
            )

    def allocate(self, layer: AttentionSpec, spec: KVCacheSpec, num_blocks: int) -> torch.Tensor:
        if layer.latent_dim is not None:
            return mla.allocate(spec, layer, num_blocks)
        # calloc-backed (numpy's zeros): the OS maps zero pages on first touch, so start-up
        # writes no gigabytes of zeros and resident memory grows only as the cache fills.
        # Stored head-major, [num_blocks, num_kv_heads, 2, block_size, head_dim], and handed out
        # as a view of the default shape [2, num_blocks, block_size, num_kv_heads, head_dim]
        # (the kernels take any strides). An attention unit reads one KV head of a request:
        # in this order its K (and V) rows of a block are one contiguous run (2 KiB for
        # SmolLM2) instead of one row in every num_kv_heads, which the memory system fetches
        # better (decode 64 x 320, one layer from memory: 1.17-1.42 -> 1.08-1.11 ms).
        itemsize = torch.empty((), dtype=spec.dtype).element_size()
        shape = (num_blocks, layer.num_kv_heads, 2, spec.block_size, layer.head_dim * itemsize)
        raw = np.zeros(shape, dtype=np.uint8)
        return torch.from_numpy(raw).view(spec.dtype).permute(2, 0, 3, 1, 4)

    def _native_ok(self, *tensors: torch.Tensor) -> bool:
        return self.use_native and all(t.dtype in _native.SUPPORTED_DTYPES for t in tensors)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch) -> None:
        slots = meta.slot_mapping
        if self._native_ok(k, v, kv_cache) and k.dtype == v.dtype and k.stride(-1) == 1 and v.stride(-1) == 1:
            _native.write_kv(k, v, kv_cache, slots)
            return
        self._write_kv_torch(k, v, kv_cache, slots)

    @staticmethod
    def _write_kv_torch(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor) -> None:
        keep = slots >= 0  # slot -1 marks padding, which is not stored
        if not bool(keep.all()):
            k, v, slots = k[keep], v[keep], slots[keep]
        # indexed by (block, offset): the head-major cache's view cannot be flattened to slots
        block_size = kv_cache.shape[2]
        blocks, offsets = slots // block_size, slots % block_size
        kv_cache[0, blocks, offsets] = k.to(kv_cache.dtype)
        kv_cache[1, blocks, offsets] = v.to(kv_cache.dtype)

    def write_latent(self, entry: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch) -> None:
        mla.write_latent(entry, kv_cache, meta.slot_mapping)

    def attend_latent(
        self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch, layer: AttentionSpec
    ) -> torch.Tensor:
        return mla.attend_latent(q, kv_cache, meta, layer)

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardBatch, layer: AttentionSpec) -> torch.Tensor:
        scale, window = layer.scale, layer.sliding_window
        if layer.logits_soft_cap is not None:
            return self._soft_capped(q, kv_cache, meta, layer)
        native = self._native_ok(q, kv_cache)
        if not layer.causal and not (native and window is None):
            return self._bidirectional(q, kv_cache, meta, layer)
        out = torch.empty_like(q)
        if native:
            if q.stride(-1) != 1:
                q = q.contiguous()
            # decodes and prefills in one call: the kernel tiles each prefill's queries
            _native.paged_attention(
                out,
                q,
                kv_cache,
                meta.block_tables,
                meta.seq_lens,
                meta.query_start_loc,
                scale,
                window,
                num_seqs=meta.num_reqs,
                causal=layer.causal,
            )
            return out
        qsl = meta.query_start_loc_cpu
        q_lens = [qsl[i + 1] - qsl[i] for i in range(meta.num_reqs)]
        decodes = [i for i, n in enumerate(q_lens) if n == 1]
        if decodes:  # all decode rows in one batched SDPA, wherever they sit in the batch
            rows = torch.tensor([qsl[i] for i in decodes])
            out[rows] = self._decode(q[rows], kv_cache, meta, decodes, scale, window)
        for i, n in enumerate(q_lens):
            if n > 1:
                s, e = qsl[i], qsl[i + 1]
                out[s:e] = self._prefill(q[s:e], kv_cache, meta.block_tables[i], meta.seq_lens_cpu[i], scale, window)
        return out

    def _soft_capped(self, q, kv_cache, meta: ForwardBatch, layer: AttentionSpec) -> torch.Tensor:
        """Request by request: scores = cap * tanh(scale * q.k / cap), causal (and windowed)
        mask, softmax, weighted values; fp32 inside."""
        cap, window = layer.logits_soft_cap, layer.sliding_window
        out = torch.zeros_like(q)
        qsl = meta.query_start_loc_cpu
        for i in range(meta.num_reqs):
            s, e, seq_len = qsl[i], qsl[i + 1], meta.seq_lens_cpu[i]
            if e == s:
                continue
            k, v = self._gather(kv_cache, meta.block_tables[i], seq_len)  # [S, hk, d]
            hq, hk = q.shape[1], k.shape[1]
            qi = q[s:e].float().unflatten(1, (hk, hq // hk))  # [L, hk, group, d]
            scores = torch.einsum("lkgd,skd->kgls", qi, k.float()) * layer.scale
            scores = cap * torch.tanh(scores / cap)
            qpos = torch.arange(seq_len - (e - s), seq_len).unsqueeze(1)
            kpos = torch.arange(seq_len).unsqueeze(0)
            mask = kpos <= qpos
            if window is not None:
                mask &= kpos > qpos - window
            probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            out[s:e] = torch.einsum("kgls,skd->lkgd", probs, v.float()).flatten(1, 2).to(q.dtype)
        return out

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec
    ) -> torch.Tensor:
        qsl = meta.query_start_loc_cpu
        whole = all(qsl[i + 1] - qsl[i] == n for i, n in enumerate(meta.seq_lens_cpu))
        if layer.causal or not whole or self._native_ok(q, kv_cache):
            # the native kernels take encoders too (not causal): store and attend natively
            self.write_kv(k, v, kv_cache, meta)
            return self.attend(q, kv_cache, meta, layer)
        # An encoder's step holds each prompt whole (the pooling engine schedules them so): its
        # own k and v are the whole context, no gather from the cache needed. The store stays in
        # torch too: after a native call the native threads spin on for a while, and the torch
        # attention right after it ran 1.5-3x slower on 2 cores (20 inputs: 6.0 s -> 4.0 s)
        self._write_kv_torch(k, v, kv_cache, meta.slot_mapping)
        return self._bidirectional(q, kv_cache, meta, layer, (k, v))

    def _bidirectional(self, q, kv_cache, meta: ForwardBatch, layer: AttentionSpec, step_kv=None) -> torch.Tensor:
        """Request by request, every query sees its request's whole context (no mask).
        Explicit scores and softmax: on these shapes (head sizes 32-64, hundreds of tokens)
        they ran twice as fast as the CPU's SDPA, which has nothing to skip without a mask."""
        out = torch.empty_like(q)
        qsl = meta.query_start_loc_cpu
        for i in range(meta.num_reqs):
            s, e = qsl[i], qsl[i + 1]
            if e == s:
                continue
            if step_kv is None:
                k, v = self._gather(kv_cache, meta.block_tables[i], meta.seq_lens_cpu[i])  # [S, hk, d]
            else:
                k, v = step_kv[0][s:e], step_kv[1][s:e]
            hq, hk = q.shape[1], k.shape[1]
            qi = q[s:e].unflatten(1, (hk, hq // hk))  # [L, hk, group, d]
            probs = (torch.einsum("lkgd,skd->kgls", qi, k.to(q.dtype)) * layer.scale).float().softmax(dim=-1)
            out[s:e] = torch.einsum("kgls,skd->lkgd", probs.to(q.dtype), v.to(q.dtype)).flatten(1, 2)
        return out

    @staticmethod
    def _gather(kv_cache, block_table, num_tokens: int):
        _, _, bs, hk, d = kv_cache.shape
        nb = -(-num_tokens // bs)
        kv = kv_cache[:, block_table[:nb]]  # [2, nb, bs, hk, d]
        kv = kv.reshape(2, nb * bs, hk, d)[:, :num_tokens]
        return kv[0], kv[1]

    def _prefill(self, q, kv_cache, block_table, seq_len: int, scale, sliding_window):
        q_len, hq, d = q.shape
        k, v = self._gather(kv_cache, block_table, seq_len)  # [S, hk, d]
        hk = k.shape[1]
        # causal with the chunk sitting at the end of the context
        qpos = torch.arange(seq_len - q_len, seq_len).unsqueeze(1)
        kpos = torch.arange(seq_len).unsqueeze(0)
        mask = kpos <= qpos
        if sliding_window is not None:
            mask &= kpos > qpos - sliding_window
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1).to(q.dtype),
            v.transpose(0, 1).to(q.dtype),
            attn_mask=mask,
            scale=scale,
            enable_gqa=hq != hk,
        )
        return o.transpose(0, 1)

    def _decode(self, q, kv_cache, meta: ForwardBatch, reqs: list[int], scale, sliding_window):
        """Requests `reqs` (one query row each, q: [len(reqs), hq, d]) in one SDPA."""
        _, _, bs, hk, d = kv_cache.shape
        hq = q.shape[1]
        seq_lens = [meta.seq_lens_cpu[i] for i in reqs]
        nb = -(-max(seq_lens) // bs)
        tables = meta.block_tables[torch.tensor(reqs), :nb]
        kv = kv_cache[:, tables]  # [2, n, nb, bs, hk, d]
        kv = kv.reshape(2, len(reqs), nb * bs, hk, d)
        k = kv[0].transpose(1, 2).to(q.dtype)  # [n, hk, L, d]
        v = kv[1].transpose(1, 2).to(q.dtype)
        lens = torch.tensor(seq_lens).unsqueeze(1)
        kpos = torch.arange(nb * bs).unsqueeze(0)
        mask = kpos < lens
        if sliding_window is not None:
            mask &= kpos >= lens - sliding_window
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2),
            k,
            v,
            attn_mask=mask[:, None, None, :],
            scale=scale,
            enable_gqa=hq != hk,
        )  # [n, hq, 1, d]
        return o.squeeze(2)
