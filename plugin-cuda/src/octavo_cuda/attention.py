"""The CUDA attention backend: routes a flat batch to the Triton kernels.

KV layout: the interface's default `[2, num_blocks, block_size, num_kv_heads,
head_dim]`. A token's keys for all heads are one contiguous row (cheap `write_kv`),
and a key of one head is head_dim contiguous elements, which the attention kernels
gather per key, so any power-of-two block size works at the same speed.

`attend` makes at most two launches: the leading `num_decodes` requests (q_len 1, the
runner puts them first) go to the split-K decode kernel, the rest (prefill chunks of
any length, decodes included if the runner did not order them) to the prefill kernel.
Neither reads a device tensor on the host, so neither waits for the GPU.
"""

from __future__ import annotations

import torch

from octavo.platform import AttentionBackend, AttentionMetadata

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class CudaAttention(AttentionBackend):
    #: tl.arange needs powers of two, and tl.dot at least 16 columns
    supported_head_sizes = (16, 32, 64, 128, 256)
    #: any power of two >= 8 (checked in check_config); listed for messages
    supported_block_sizes = None

    def check_config(self, *, head_dim: int, block_size: int, dtype: torch.dtype) -> str | None:
        why = super().check_config(head_dim=head_dim, block_size=block_size, dtype=dtype)
        if why:
            return why
        if block_size < 8 or block_size & (block_size - 1):
            return f"block size {block_size} is not supported (need a power of two >= 8)"
        if dtype not in SUPPORTED_DTYPES:
            return f"dtype {dtype} is not supported (supported: bfloat16, float16, float32)"
        return None

    def write_kv(self, k, v, kv_cache, slot_mapping) -> None:
        from octavo_triton.kv_cache import write_kv

        write_kv(k, v, kv_cache[0], kv_cache[1], slot_mapping)

    def attend(self, q, kv_cache, meta: AttentionMetadata, scale: float, sliding_window=None):
        from octavo_triton.decode_attention import decode_attention
        from octavo_triton.prefill_attention import prefill_attention

        out = torch.empty_like(q)
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        num_seqs = meta.seq_lens.shape[0]
        nd = meta.num_decodes
        # decode i must be query row i: the decode kernel does not read query_start_loc
        assert not meta.query_start_loc_cpu or meta.query_start_loc_cpu[nd] == nd
        if nd > 0:
            decode_attention(
                out,
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.seq_lens,
                nd,
                meta.max_seq_len,
                scale,
                sliding_window,
            )
        if nd < num_seqs:
            prefill_attention(
                out,
                q,
                k_cache,
                v_cache,
                meta.block_tables[nd:],
                meta.seq_lens[nd:],
                meta.query_start_loc[nd:],
                q.shape[0] - nd,
                meta.max_query_len,
                scale,
                sliding_window,
            )
        return out
