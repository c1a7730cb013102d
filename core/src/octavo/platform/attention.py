"""The attention back end: it owns the KV cache (its size, layout, allocation) and attends.

What core hands it, and what a kernel author must get right:

* `AttentionSpec` describes one attention layer (heads, head size, scale, sliding window,
  causal or not). `kv_cache_spec` says what that layer's cache costs per block: core sizes
  the cache from those bytes only, never from a formula of its own, and `allocate` makes
  it in whatever layout the back end's kernels read.
* A *slot* is `block_id * block_size + offset`; token t's k/v go to `slot_mapping[t]`. A
  slot of -1 is padding: nothing is stored, and nothing else may change.
* A step is one flat `ForwardBatch`: the query tokens of all requests concatenated,
  request i owning rows `query_start_loc[i]:query_start_loc[i+1]`. They are the *last*
  `q_len_i` positions of its `seq_lens[i]` tokens of context, whose KV (the new tokens'
  included, written just before) lives in blocks `block_tables[i, :]`. A request may have
  q_len 0 (a padding row of a static-shape step): it attends to nothing.
* Causal layers: query j of request i (absolute position `seq_lens[i] - q_len_i + j`) sees
  context positions up to its own; with `sliding_window = W` only the last W of those.
  Non-causal layers (encoders) see the whole context of their request.
* Scores are `scale * q.k`; with `logits_soft_cap = c` (Gemma 2) they become
  `c * tanh(score / c)` before masking and softmax. A back end that does not implement it
  leaves `supports_logits_soft_cap` False, and `supports` refuses such layers.
* GQA: query head h reads KV head `h // (num_heads // num_kv_heads)`.
* A prefill, a prefill chunk and a decode are the same call with different q_len; one call
  serves any mix. The back end may order its work as it likes (`build_metadata`).
* Latent layers (multi-head latent attention, DeepSeek's MLA; since 2.3): the layer caches one
  entry of `head_dim` features per token, shared by all its heads (`num_kv_heads` 1), not
  per-head keys and values: the compressed latent (its first `latent_dim` features) and the
  rotary key (the rest). The model folds the per-head projections into q and the output, so
  the back end runs multi-query attention in which a token's key is its whole entry and its
  value the entry's first `latent_dim` features: `write_latent` stores entries, `attend_latent`
  returns [T, num_heads, latent_dim]. Masking and scale as above. A back end that serves them
  sets `supports_mla`; the default cache layout of such a layer is
  `[num_blocks, block_size, head_dim]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from octavo.platform.device import Device


@dataclass(frozen=True)
class AttentionSpec:
    """One attention layer, as the model declares it (per rank: its share of the heads)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None = None
    causal: bool = True
    logits_soft_cap: float | None = None  # c: scores -> c * tanh(scores / c) (since 2.1)
    #: a latent (MLA) layer: its entry's first latent_dim features are the values (since 2.3)
    latent_dim: int | None = None


@dataclass(frozen=True)
class KVCacheSpec:
    """What one layer's KV cache costs: core allocates `num_blocks` of these per layer."""

    block_size: int  # tokens per block
    page_bytes: int  # bytes of one block of this layer (keys and values, scales, padding)
    dtype: torch.dtype


@dataclass(frozen=True)
class ForwardBatch:
    """One step's flat inputs, built by the runner; the attention back end builds its own
    metadata from it (`AttentionBackend.build_metadata`).

    Device tensors are on the platform's device. The host lists hold the same numbers for
    kernels that size launches in Python; a static-shape step must not read them inside its
    compiled region (`num_tokens_t` / `num_reqs_t` are the counts as device scalars).
    """

    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    slot_mapping: torch.Tensor  # int64 [T], -1 = padding
    query_start_loc: torch.Tensor  # int32 [B + 1]
    seq_lens: torch.Tensor  # int32 [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks_per_seq]
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    num_tokens_t: torch.Tensor | None = None  # int32 [] real (unpadded) tokens
    num_reqs_t: torch.Tensor | None = None  # int32 [] real (unpadded) requests

    @property
    def num_reqs(self) -> int:
        """Rows of the request arrays (padding rows of a static-shape step included)."""
        return len(self.seq_lens_cpu)


class AttentionBackend:
    """Paged attention and its KV cache. Subclass it: `write_kv` and `attend` are required;
    the cache layout defaults to `[2, num_blocks, block_size, num_kv_heads, head_dim]`
    (index 0 = keys, 1 = values), and a back end that changes it overrides `kv_cache_spec`,
    `allocate`, `write_kv` and `attend` together (only its own kernels read its layout)."""

    #: block sizes the kernels support; None = any power of two
    supported_block_sizes: tuple[int, ...] | None = None
    #: head sizes the kernels support; None = any
    supported_head_sizes: tuple[int, ...] | None = None
    #: the kernels cap scores as `AttentionSpec.logits_soft_cap` says (since 2.1; opt in)
    supports_logits_soft_cap: bool = False
    #: `write_latent` and `attend_latent` serve latent (MLA) layers (since 2.3; opt in)
    supports_mla: bool = False

    def __init__(self, device: Device) -> None:
        self.device = device

    def supports(self, layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> str | None:
        """Why this back end cannot serve the layer (a sentence), or None if it can."""
        if self.supported_head_sizes is not None and layer.head_dim not in self.supported_head_sizes:
            return f"head size {layer.head_dim} is not supported (supported: {list(self.supported_head_sizes)})"
        if self.supported_block_sizes is not None and block_size not in self.supported_block_sizes:
            return f"block size {block_size} is not supported (supported: {list(self.supported_block_sizes)})"
        if layer.logits_soft_cap is not None and not self.supports_logits_soft_cap:
            return (
                f"attention logit soft-capping (Gemma 2's, at {layer.logits_soft_cap}) is not implemented by "
                f"{type(self).__name__}"
            )
        if layer.latent_dim is not None and not self.supports_mla:
            return f"multi-head latent attention (DeepSeek's MLA) is not implemented by {type(self).__name__}"
        return None

    def kv_cache_spec(self, layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> KVCacheSpec:
        """The cost of one block of this layer's cache in this back end's layout."""
        elem = torch.empty((), dtype=dtype).element_size()
        if layer.latent_dim is not None:  # one entry per token: the values are part of it
            return KVCacheSpec(block_size, block_size * layer.num_kv_heads * layer.head_dim * elem, dtype)
        return KVCacheSpec(block_size, 2 * block_size * layer.num_kv_heads * layer.head_dim * elem, dtype)

    def allocate(self, layer: AttentionSpec, spec: KVCacheSpec, num_blocks: int) -> Any:
        """One layer's cache of `num_blocks` blocks, zero-filled (kernels may read, and mask,
        slots no token has written yet). Whatever it returns is what `write_kv` and `attend`
        receive as `kv_cache`."""
        shape: tuple[int, ...] = (2, num_blocks, spec.block_size, layer.num_kv_heads, layer.head_dim)
        if layer.latent_dim is not None:
            shape = (num_blocks, spec.block_size, layer.head_dim)
        return torch.zeros(shape, dtype=spec.dtype, device=self.device.torch_device())

    def build_metadata(self, batch: ForwardBatch) -> Any:
        """This back end's view of a step, built once per step and handed to every layer's
        `write_kv` / `attend` (split counts, work lists, page indices...). Default: the batch."""
        return batch

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: Any, meta: Any) -> None:
        """Store k, v ([T, num_kv_heads, head_dim]) at the batch's slots (in place)."""
        raise NotImplementedError

    def attend(self, q: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec) -> torch.Tensor:
        """q: [T, num_heads, head_dim] -> output [T, num_heads, head_dim] (q's dtype)."""
        raise NotImplementedError

    def write_latent(self, entry: torch.Tensor, kv_cache: Any, meta: Any) -> None:
        """A latent layer's entries ([T, head_dim]: latent, then rotary key) at the batch's
        slots, in place (since 2.3; with `supports_mla`)."""
        raise NotImplementedError

    def attend_latent(self, q: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec) -> torch.Tensor:
        """A latent layer's attention (since 2.3; with `supports_mla`): q [T, num_heads,
        head_dim] scores against whole entries, values are their first `layer.latent_dim`
        features -> [T, num_heads, latent_dim] (q's dtype)."""
        raise NotImplementedError

    def read_blocks(self, kv_cache: Any, block_ids: torch.Tensor, layer: AttentionSpec) -> torch.Tensor:
        """Blocks `block_ids` (int64) of one layer's cache as one contiguous tensor, block-major
        (`[len(block_ids), ...]`), in whatever per-block layout this back end keeps (since 2.3;
        disaggregated prefill copies KV between instances of the same back end with it).
        Default: caches presented in the default shape (a strided view counts)."""
        dim = self._block_dim(kv_cache, layer)
        blocks: torch.Tensor = kv_cache.index_select(dim, block_ids).movedim(dim, 0).contiguous()
        return blocks

    def write_blocks(self, kv_cache: Any, block_ids: torch.Tensor, data: torch.Tensor, layer: AttentionSpec) -> None:
        """Store `data` (as `read_blocks` returned it) into blocks `block_ids`, in place (since 2.3)."""
        dim = self._block_dim(kv_cache, layer)
        kv_cache.index_copy_(dim, block_ids, data.movedim(0, dim).to(kv_cache.dtype))

    def _block_dim(self, kv_cache: Any, layer: AttentionSpec) -> int:
        """The block dimension of a cache in the default shape; refuses any other layout."""
        if isinstance(kv_cache, torch.Tensor):
            if layer.latent_dim is not None and kv_cache.dim() == 3 and kv_cache.shape[2] == layer.head_dim:
                return 0
            heads = (layer.num_kv_heads, layer.head_dim)
            if kv_cache.dim() == 5 and kv_cache.shape[0] == 2 and tuple(kv_cache.shape[3:]) == heads:
                return 1
        raise NotImplementedError(
            f"{type(self).__name__} keeps its KV cache in a layout of its own: it must implement read_blocks and "
            "write_blocks for KV transfer (disaggregated prefill)"
        )

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec
    ) -> torch.Tensor:
        """One layer's attention: store this step's k/v, then attend. Override to fuse the two."""
        self.write_kv(k, v, kv_cache, meta)
        return self.attend(q, kv_cache, meta, layer)
