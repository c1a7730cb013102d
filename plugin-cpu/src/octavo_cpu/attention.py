"""Paged varlen attention on the CPU.

The native kernels (csrc/, through `_native`) serve the default KV layout whenever
q and the cache are float32 or bfloat16:

* attend: one native call for the whole batch, decodes and prefill chunks alike,
  parallel over (request, KV head, tile of 16 query tokens), long decodes split across
  threads when there are too few of those; each query-head group reads its K/V blocks
  once, online softmax, fp32 accumulation. On AVX-512 a blocked kernel takes 32 keys at
  a time (vdpbf16ps on bf16 where the CPU has it); docs/cpu.md has the details and
  figures. (The native prefill beat the torch path below by 1.4-3x on SmolLM2 shapes
  before the blocked kernel, so no row kind stays on it.)
* write_kv: a native scatter into the slots.

The torch path below stays for what the native kernels do not cover: float16 (or any
other dtype), and a build without the extension (e.g. a source checkout never
installed). It gathers blocks through the table into a padded tensor and calls SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.platform import AttentionBackend, AttentionMetadata
from octavo_cpu import _native


class CpuAttention(AttentionBackend):
    def __init__(self, use_native: bool | None = None) -> None:
        # None = native when the extension imported
        self.use_native = _native.available() if use_native is None else use_native
        if self.use_native and not _native.available():
            raise RuntimeError(
                f"octavo-cpu's native kernels did not import: {_native.IMPORT_ERROR}. "
                "Reinstall the package (`pip install ./plugin-cpu`) to build them."
            )

    def _native_ok(self, *tensors: torch.Tensor) -> bool:
        return self.use_native and all(t.dtype in _native.SUPPORTED_DTYPES for t in tensors)

    def write_kv(self, k, v, kv_cache, slot_mapping) -> None:
        if self._native_ok(k, v, kv_cache) and k.dtype == v.dtype and k.stride(-1) == 1 and v.stride(-1) == 1:
            _native.write_kv(k, v, kv_cache, slot_mapping)
            return
        keep = slot_mapping >= 0  # slot -1 marks padding, which is not stored
        if not bool(keep.all()):
            k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
        _, num_blocks, block_size, hk, d = kv_cache.shape
        flat = kv_cache.view(2, num_blocks * block_size, hk, d)
        flat[0].index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
        flat[1].index_copy_(0, slot_mapping, v.to(kv_cache.dtype))

    def attend(self, q, kv_cache, meta: AttentionMetadata, scale: float, sliding_window=None):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        qsl = meta.query_start_loc_cpu
        if self._native_ok(q, kv_cache):
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
                sliding_window,
                num_seqs=meta.num_seqs,
            )
            return out
        if nd > 0:
            out[:nd] = self._decode(q[:nd], kv_cache, meta, nd, scale, sliding_window)
        for i in range(nd, meta.num_seqs):
            s, e = qsl[i], qsl[i + 1]
            out[s:e] = self._prefill(
                q[s:e], kv_cache, meta.block_tables[i], meta.seq_lens_cpu[i], scale, sliding_window
            )
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

    def _decode(self, q, kv_cache, meta: AttentionMetadata, nd: int, scale, sliding_window):
        _, _, bs, hk, d = kv_cache.shape
        hq = q.shape[1]
        max_len = max(meta.seq_lens_cpu[:nd])
        nb = -(-max_len // bs)
        tables = meta.block_tables[:nd, :nb]
        kv = kv_cache[:, tables]  # [2, nd, nb, bs, hk, d]
        kv = kv.reshape(2, nd, nb * bs, hk, d)
        k = kv[0].transpose(1, 2).to(q.dtype)  # [nd, hk, L, d]
        v = kv[1].transpose(1, 2).to(q.dtype)
        seq_lens = meta.seq_lens[:nd].to(torch.long).unsqueeze(1)
        kpos = torch.arange(nb * bs).unsqueeze(0)
        mask = kpos < seq_lens
        if sliding_window is not None:
            mask &= kpos >= seq_lens - sliding_window
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2),
            k,
            v,
            attn_mask=mask[:, None, None, :],
            scale=scale,
            enable_gqa=hq != hk,
        )  # [nd, hq, 1, d]
        return o.squeeze(2)
