"""Ahead-of-time compilation for real TPUs on a host without one: libtpu's compiler builds the
Pallas kernel and one whole step (SmolLM2's layer shapes, bf16) for TPU v5e and v6e topologies, and
reports what they take (it raises on a VMEM overflow). The figures are printed (-s) for
docs/tpu.md."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tiny_models import make_tiny_model, tiny_config

from octavo.engine_args import EngineArgs
from octavo_tpu.attention import TP_AXIS
from octavo_tpu.kernels.paged_attention import ragged_paged_attention, step_metadata

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (octavo-tpu[tpu])")

#: topology -> HBM of one chip
TOPOLOGIES = {"v5e:2x2": 16 << 30, "v6e:2x2": 32 << 30}
NUM_BLOCKS = 2048


def _mesh(topology: str) -> Mesh:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    return Mesh(devices[:1], (TP_AXIS,))


def _report(what: str, compiled) -> int:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    print(
        f"\n{what}: arguments {m.argument_size_in_bytes / 2**20:.1f} MiB, outputs {m.output_size_in_bytes / 2**20:.1f} "
        f"MiB (aliased {m.alias_size_in_bytes / 2**20:.1f}), temporaries {m.temp_size_in_bytes / 2**20:.2f} MiB, "
        f"code {m.generated_code_size_in_bytes / 2**10:.0f} KiB"
    )
    return total


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize(
    ("tokens", "reqs", "width", "kv_heads", "group", "head_dim"),
    [
        (
            256,
            16,
            64,
            8,
            4,
            128,
        ),
        (64, 64, 512, 3, 3, 64),
    ],  # an 8B-like layer; SmolLM2's, 64 decodes
    ids=["llama8b-layer", "smollm2-decodes"],
)
def test_attention_kernel_compiles_for_tpu(topology, tokens, reqs, width, kv_heads, group, head_dim):
    rep = NamedSharding(_mesh(topology), P())

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

    def attention(q, pages, qsl, seq_lens, tables, slots):
        return ragged_paged_attention(q, pages, step_metadata(qsl, seq_lens, tables, slots), scale=head_dim**-0.5)

    compiled = (
        jax.jit(attention)
        .lower(
            spec((tokens, kv_heads * group, head_dim), jnp.bfloat16),
            spec((2, kv_heads, NUM_BLOCKS, 16, head_dim), jnp.bfloat16),
            spec((reqs + 1,), jnp.int32),
            spec((reqs,), jnp.int32),
            spec((reqs, width), jnp.int32),
            spec((tokens,), jnp.int32),
        )
        .compile()
    )
    assert _report(f"attention {topology} T={tokens} B={reqs} W={width} D={head_dim}", compiled) < TOPOLOGIES[topology]


@pytest.fixture(scope="module")
def smollm2_runner(tmp_path_factory):
    """octavo-tpu's runner over SmolLM2-135M's layer shapes (2 of its 30 layers, random weights,
    bf16), its cache not allocated."""
    from transformers import LlamaConfig

    shapes = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
    path = make_tiny_model(
        "llama",
        str(tmp_path_factory.mktemp("smollm2-layers")),
        LlamaConfig(**{**tiny_config("llama").to_dict(), **shapes, "head_dim": 64, "rope_parameters": None}),
    )
    config, platform, source = EngineArgs(
        model=path, device="tpu-cpu", dtype="bfloat16", max_model_len=256
    ).create_config()
    runner = platform.make_runner(config, source)
    yield runner
    runner.shutdown()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_whole_step_compiles_for_tpu(topology, smollm2_runner):
    """One step of 256 tokens over 4 requests, 64-block tables: forward, logits, sampling, and
    the cache donated (its pages come back aliased to the inputs)."""
    runner, mesh = smollm2_runner, _mesh(topology)
    pages = [
        jax.ShapeDtypeStruct(
            (2, spec.num_kv_heads, NUM_BLOCKS, runner.block_size, spec.head_dim),
            jnp.bfloat16,
            sharding=NamedSharding(mesh, P(None, TP_AXIS)),
        )
        for spec in runner.specs
    ]
    attention = runner.platform.attention
    attention._interpret, attention._mesh = False, mesh  # the real kernel, for these devices
    try:
        compiled = runner._lower((256, 4, 64), mesh, pages).compile()
    finally:
        attention._interpret, attention._mesh = True, runner._mesh
    total = _report(f"2 SmolLM2 layers, step {topology} (256 tokens, 4 requests, {NUM_BLOCKS} blocks)", compiled)
    m = compiled.memory_analysis()
    cache_bytes = sum(2 * p.shape[1] * NUM_BLOCKS * runner.block_size * p.shape[4] * 2 for p in pages)
    assert m.alias_size_in_bytes >= cache_bytes, "the KV cache must be donated to the step, not copied"
    assert total < TOPOLOGIES[topology]
