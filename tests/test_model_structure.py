"""`DecoderStructure` is a promise: a model that returns one computes exactly `decoder_forward`
on it (a platform's runner reads the structure, not the model's internals). Held for every
architecture on random inputs, KV cache writes included, and shown to catch a changed layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from spy_platform import spy_platform
from tiny_models import TINY_ARCHS

from octavo import LLM
from octavo.models.llama import DecoderLayer
from octavo.models.structure import decoder_forward
from octavo_plugin_kit.inputs import make_forward_batch


def _both_ways(llm):
    runner = llm.llm_engine.runner
    platform, model = runner.platform, runner.model
    g = torch.Generator().manual_seed(0)
    # a decode on a long context and a prefill chunk after cached tokens, in one step
    batch = make_forward_batch([40, 30], [1, 9], runner.block_size, 8, generator=g)
    vocab = model.embed_tokens.shape[0]
    batch = dataclasses.replace(batch, input_ids=torch.randint(0, vocab, batch.input_ids.shape, generator=g))
    start = [torch.randn(kv.shape, generator=g).to(kv.dtype) for kv in runner.kv_caches]
    meta = platform.attention.build_metadata(batch)
    caches_a = [kv.clone() for kv in start]
    caches_b = [kv.clone() for kv in start]
    with torch.inference_mode():
        a = model(batch.input_ids, batch.positions, caches_a, meta)
        b = decoder_forward(model.structure(), platform, batch.input_ids, batch.positions, caches_b, meta)
    return a, b, caches_a, caches_b


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_structure_computes_the_models_forward(arch, tiny_model_dirs):
    spy_platform()
    llm = LLM(model=tiny_model_dirs[arch], device="spy", dtype="float32", kv_cache_memory="4MiB", max_model_len=64)
    if llm.llm_engine.runner.model.structure() is None:
        pytest.skip(
            f"{arch}'s math is not DecoderStructure's (its norms, scales or residual stream): it describes none"
        )
    a, b, caches_a, caches_b = _both_ways(llm)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(caches_a, caches_b))


def test_a_changed_layer_breaks_the_promise(tiny_model_dirs, monkeypatch):
    spy_platform()
    llm = LLM(model=tiny_model_dirs["llama"], device="spy", dtype="float32", kv_cache_memory="4MiB", max_model_len=64)
    original = DecoderLayer.forward

    def changed(self, x, residual, *args):  # e.g. someone adds a scale to the residual stream
        out, residual = original(self, x, residual, *args)
        return out * 1.5, residual

    monkeypatch.setattr(DecoderLayer, "forward", changed)
    a, b, _, _ = _both_ways(llm)
    assert not torch.allclose(a, b)
