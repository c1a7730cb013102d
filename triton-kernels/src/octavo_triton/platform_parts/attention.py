"""The attention back end of the Triton GPUs: routes a flat batch to octavo_triton's paged kernels.

KV layout: the contract's default `[2, num_blocks, block_size, num_kv_heads, head_dim]`. A
token's keys for all heads are one contiguous row (cheap `write_kv`), and a key of one head
is head_dim contiguous elements, which the attention kernels gather per key, so any
power-of-two block size works at the same speed.

`attend` makes at most two launches. The split-K decode kernel reads request i's query at
row i, so it can take only the *leading* requests of q_len 1 (`num_decodes`, counted by
`build_metadata`); every request after them (prefill chunks of any length, and decodes
that follow a chunk) goes to the prefill kernel. The count comes from the batch's host
lists and neither kernel reads a device tensor on the host, so nothing waits for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.platform import AttentionBackend, AttentionSpec, ForwardBatch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class TritonAttentionMetadata:
    """One step as the kernels take it: the batch, and how many of its first requests are
    decodes laid out one query row each (rows 0..num_decodes-1)."""

    batch: ForwardBatch
    num_decodes: int


def leading_decodes(query_start_loc: list[int]) -> int:
    """How many requests, from the first, have exactly one query token."""
    n = 0
    while n + 1 < len(query_start_loc) and query_start_loc[n + 1] - query_start_loc[n] == 1:
        n += 1
    return n


class TritonAttention(AttentionBackend):
    #: tl.arange needs powers of two, and tl.dot at least 16 columns
    supported_head_sizes = (16, 32, 64, 128, 256)
    #: any power of two >= 8 (checked in `supports`)
    supported_block_sizes = None
    #: latent layers (DeepSeek's MLA): octavo_triton.mla_attention, one kernel for every row kind
    supports_mla = True

    def supports(self, layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> str | None:
        if layer.latent_dim is not None:
            return self._latent_support(layer, dtype, block_size)
        why = super().supports(layer, dtype, block_size)
        if why:
            return why
        if block_size < 8 or block_size & (block_size - 1):
            return f"block size {block_size} is not supported (need a power of two >= 8)"
        if dtype not in SUPPORTED_DTYPES:
            return f"dtype {dtype} is not supported (supported: bfloat16, float16, float32)"
        if not layer.causal and layer.sliding_window is not None:
            return "non-causal attention with a sliding window is not supported"
        return None

    @staticmethod
    def _latent_support(layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> str | None:
        assert layer.latent_dim is not None
        rope = layer.head_dim - layer.latent_dim
        for what, n in (("latent", layer.latent_dim), ("rotary key", rope)):
            if n < 16 or n & (n - 1):
                return f"a {what} of {n} features is not supported by the MLA kernel (need a power of two >= 16)"
        if block_size < 8 or block_size & (block_size - 1):
            return f"block size {block_size} is not supported (need a power of two >= 8)"
        if dtype not in SUPPORTED_DTYPES:
            return f"dtype {dtype} is not supported (supported: bfloat16, float16, float32)"
        if layer.sliding_window is not None or not layer.causal:
            return "the MLA kernel is causal only, without a sliding window"
        return None

    def build_metadata(self, batch: ForwardBatch) -> TritonAttentionMetadata:
        # the host list, never the device tensor: reading that back would wait for the GPU
        return TritonAttentionMetadata(batch, leading_decodes(batch.query_start_loc_cpu))

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: TritonAttentionMetadata) -> None:
        from octavo_triton.kv_cache import write_kv

        write_kv(k, v, kv_cache[0], kv_cache[1], meta.batch.slot_mapping)

    def write_latent(self, entry: torch.Tensor, kv_cache: torch.Tensor, meta: TritonAttentionMetadata) -> None:
        from octavo_triton.mla_attention import write_latent

        write_latent(entry, kv_cache, meta.batch.slot_mapping)

    def attend_latent(
        self, q: torch.Tensor, kv_cache: torch.Tensor, meta: TritonAttentionMetadata, layer: AttentionSpec
    ) -> torch.Tensor:
        from octavo_triton.mla_attention import mla_attention

        assert layer.latent_dim is not None
        b = meta.batch
        out = q.new_empty(q.shape[0], q.shape[1], layer.latent_dim)
        if q.stride(-1) != 1:
            q = q.contiguous()
        mla_attention(
            out,
            q,
            kv_cache,
            b.block_tables,
            b.seq_lens,
            b.query_start_loc,
            b.num_reqs,
            b.max_query_len,
            b.max_seq_len,
            layer.scale,
        )
        return out

    def attend(
        self, q: torch.Tensor, kv_cache: torch.Tensor, meta: TritonAttentionMetadata, layer: AttentionSpec
    ) -> torch.Tensor:
        from octavo_triton.decode_attention import decode_attention
        from octavo_triton.prefill_attention import prefill_attention

        out = torch.empty_like(q)
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        b, nd = meta.batch, meta.num_decodes
        if nd > 0:
            decode_attention(
                out,
                q,
                k_cache,
                v_cache,
                b.block_tables,
                b.seq_lens,
                nd,
                b.max_seq_len,
                layer.scale,
                layer.sliding_window,
            )
        if nd < b.num_reqs:
            prefill_attention(
                out,
                q,
                k_cache,
                v_cache,
                b.block_tables[nd:],
                b.seq_lens[nd:],
                b.query_start_loc[nd:],
                q.shape[0] - nd,
                b.max_query_len,
                layer.scale,
                layer.sliding_window,
                causal=layer.causal,
            )
        return out
