"""The TPU attention back end: KV cache as JAX arrays, the Pallas ragged paged attention kernel.

Its calls take torch tensors, as the contract says, in two settings:

* inside the runner's compiled step, core's model runs under torchax, so q/k/v are torchax
  tensors (views of traced JAX arrays) and the cache's pages are traced arrays: the back end
  computes on the JAX arrays and hands torchax views back; the step returns each layer's
  new pages (the runner donates the old ones);
* called directly (the conformance suite, tests), they are host torch tensors: the back end
  converts them to JAX arrays, runs the same jitted kernel, and converts the result back.

A layer's cache is a `PagedKVCache`, a holder of one array
`[2, num_kv_heads, num_blocks, block_size, head_dim]`: JAX arrays are immutable, so `write_kv`
"stores in place" by replacing the holder's array with the updated one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.sharding import PartitionSpec as P

from octavo.platform import AttentionBackend, AttentionSpec, ForwardBatch, KVCacheSpec
from octavo_tpu.kernels.paged_attention import StepMetadata, ragged_paged_attention, step_metadata, write_kv
from octavo_tpu.torchax_import import torchax

#: the mesh axis tensor parallelism splits heads over (runner.py builds the mesh)
TP_AXIS = "tp"


class PagedKVCache:
    """One layer's KV cache: `pages` is replaced, never mutated, by each write."""

    def __init__(self, pages: jax.Array) -> None:
        self.pages = pages


def jax_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: jnp.float32, torch.bfloat16: jnp.bfloat16, torch.float16: jnp.float16}[dtype]


class TpuAttention(AttentionBackend):
    """Ragged paged attention (Pallas) over a JAX-array cache; see the module doc."""

    def __init__(self, device: Any) -> None:
        super().__init__(device)
        #: the device mesh of a tensor-parallel run (set by the runner): the kernel then runs
        #: per device on its KV heads (shard_map), since XLA cannot partition a Pallas call
        self._mesh: jax.sharding.Mesh | None = None
        #: run the Pallas kernel in interpret mode (off a TPU; a test compiling for a TPU
        #: topology ahead of time turns it off)
        self._interpret: bool = device._interpret

    def supports(self, layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> str | None:
        if dtype not in (torch.float32, torch.bfloat16):
            return f"{dtype} is not supported (supported: float32, bfloat16)"
        if block_size % 8:
            return f"block size {block_size} is not a multiple of 8 (a page is copied as whole sublane tiles)"
        if layer.num_heads % layer.num_kv_heads:
            return f"{layer.num_heads} query heads do not split evenly over {layer.num_kv_heads} KV heads"
        return None

    def kv_cache_spec(self, layer: AttentionSpec, dtype: torch.dtype, block_size: int) -> KVCacheSpec:
        elem = torch.empty((), dtype=dtype).element_size()
        return KVCacheSpec(block_size, 2 * block_size * layer.num_kv_heads * layer.head_dim * elem, dtype)

    def allocate(self, layer: AttentionSpec, spec: KVCacheSpec, num_blocks: int) -> PagedKVCache:
        shape = (2, layer.num_kv_heads, num_blocks, spec.block_size, layer.head_dim)
        sharding = None
        if self._mesh is not None:  # each device holds its KV heads' pages
            sharding = jax.sharding.NamedSharding(self._mesh, P(None, TP_AXIS))
        else:
            sharding = jax.sharding.SingleDeviceSharding(self.device._jax_devices()[0])
        return PagedKVCache(jnp.zeros(shape, jax_dtype(spec.dtype), device=sharding))

    def build_metadata(self, batch: ForwardBatch) -> StepMetadata:
        """The host path's metadata (the compiled step builds it from its own arrays)."""
        arrays = (batch.query_start_loc, batch.seq_lens, batch.block_tables, batch.slot_mapping)
        return _metadata(*(self._to_jax(t.to(torch.int32)) for t in arrays))

    def write_kv(self, k: torch.Tensor, v: torch.Tensor, kv_cache: PagedKVCache, meta: StepMetadata) -> None:
        kv_cache.pages = _write(kv_cache.pages, self._to_jax(k), self._to_jax(v), meta.slot_mapping)

    def attend(self, q: torch.Tensor, kv_cache: PagedKVCache, meta: StepMetadata, layer: AttentionSpec) -> torch.Tensor:
        out = _attend(q=self._to_jax(q), pages=kv_cache.pages, meta=meta, **self._kernel_args(layer))
        return self._to_torch(out, like=q)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: PagedKVCache,
        meta: StepMetadata,
        layer: AttentionSpec,
    ) -> torch.Tensor:
        if self._mesh is None or self._mesh.size == 1:
            return super().forward(q, k, v, kv_cache, meta, layer)
        kernel_args = self._kernel_args(layer)

        def local(q, k, v, pages, meta):  # one device: its KV heads and their query heads
            pages = write_kv(pages, k, v, meta.slot_mapping)
            return ragged_paged_attention(q, pages, meta, **kernel_args), pages

        heads = P(None, TP_AXIS, None)
        out, kv_cache.pages = jax.shard_map(
            local,
            mesh=self._mesh,
            in_specs=(heads, heads, heads, P(None, TP_AXIS), P()),
            out_specs=(heads, P(None, TP_AXIS)),
            check_vma=False,
        )(self._to_jax(q), self._to_jax(k), self._to_jax(v), kv_cache.pages, meta)
        return self._to_torch(out, like=q)

    # ---- helpers ----------------------------------------------------------------------
    def _kernel_args(self, layer: AttentionSpec) -> dict[str, Any]:
        return {
            "scale": layer.scale,
            "sliding_window": layer.sliding_window,
            "causal": layer.causal,
            "interpret": self._interpret,
        }

    def _to_jax(self, t: torch.Tensor) -> jax.Array:
        tx = torchax()
        if isinstance(t, tx.tensor.Tensor):
            return t.jax()
        host = t.detach().cpu().contiguous()
        if host.dtype == torch.bfloat16:  # numpy has no bfloat16: carry the bits
            array = host.view(torch.int16).numpy().view(jnp.bfloat16)
        else:
            array = host.numpy()
        return jax.device_put(array, self.device._jax_devices()[0])

    @staticmethod
    def _to_torch(a: jax.Array, like: torch.Tensor) -> torch.Tensor:
        tx = torchax()
        if isinstance(like, tx.tensor.Tensor):
            return tx.interop.torch_view(a)
        host = np.asarray(jax.device_get(a))
        if host.dtype == jnp.bfloat16:
            return torch.from_numpy(host.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(host.copy())


# the host path's jitted pieces (inside the compiled step they are traced into it instead)
_metadata = jax.jit(step_metadata)
_write = jax.jit(write_kv)


@functools.partial(jax.jit, static_argnames=("scale", "sliding_window", "causal", "interpret"))
def _attend(q, pages, meta, *, scale, sliding_window, causal, interpret):
    return ragged_paged_attention(
        q, pages, meta, scale=scale, sliding_window=sliding_window, causal=causal, interpret=interpret
    )
