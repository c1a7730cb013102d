"""Quantized checkpoints: each format a tiny model was written in (tests/quant_models.py) loads
and generates the greedy tokens of the same model on its dequantized weights; unsupported
formats, parameters and --quantization values are refused by name, with what is supported.

Weight-only formats are compared with transformers on the dequantized weights (a dense
directory the quantizer wrote), GPTQ and GGUF with the engine on them too, GGUF with
transformers on the file itself; W8A8 ones
(which quantize activations too) with transformers on the dequantized weights whose linear
layers round their inputs as the kit's reference defines (reference_quant.quantize_activations).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from quant_models import (
    write_awq,
    write_compressed_tensors,
    write_fp8_block,
    write_gguf,
    write_gptq,
)
from tiny_models import assert_greedy_matches, hf_greedy, make_tiny_model, tiny_config

from octavo import LLM, SamplingParams
from octavo.quantization import QuantizationError
from octavo_plugin_kit.reference_quant import quantize_activations

PROMPTS = [[5, 17, 300, 42, 7, 99], [100, 200, 3]]
NEW_TOKENS = 6
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
#: the GGUF file's layers: each type on a fused group of layers that share one GEMM
GGUF_TYPES = {
    "model.layers.0.self_attn.q_proj": "Q4_0",
    "model.layers.0.self_attn.k_proj": "Q4_0",
    "model.layers.0.self_attn.v_proj": "Q4_0",
    "model.layers.0.self_attn.o_proj": "Q4_1",
    "model.layers.0.mlp.gate_proj": "Q8_0",
    "model.layers.0.mlp.up_proj": "Q8_0",
    "model.layers.0.mlp.down_proj": "Q4_K",
    "model.layers.1.self_attn.q_proj": "Q5_K",
    "model.layers.1.self_attn.k_proj": "Q5_K",
    "model.layers.1.self_attn.v_proj": "Q5_K",
    "model.layers.1.self_attn.o_proj": "Q6_K",
    "model.layers.1.mlp.gate_proj": "Q4_1",
    "model.layers.1.mlp.up_proj": "Q4_1",
    "model.layers.1.mlp.down_proj": "Q6_K",
    "lm_head": "Q8_0",
}


def _engine(path: str, **kw) -> LLM:
    return LLM(path, device="cpu", dtype="float32", max_model_len=64, kv_cache_memory="16MiB", **kw)


def _generate(llm: LLM) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _kept(llm: LLM) -> dict[str, int]:
    """How many linear layers of the engine's model run each quantized method."""
    from octavo.layers.linear import Linear

    counts: dict[str, int] = {}
    for m in llm.llm_engine.runner.model.modules():
        if isinstance(m, Linear) and hasattr(m.method, "scheme"):
            counts[m.method.scheme.describe()] = counts.get(m.method.scheme.describe(), 0) + 1
    return counts


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """A tiny Llama whose widths every layout takes (K-quant blocks of 256, FP8 blocks of 128),
    with a vocabulary of 512 (SmolLM2's tokenizer decodes those ids; GGUF files get a 512-token
    tokenizer of their own, quick to convert)."""
    cfg = tiny_config("llama")
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size = 256, 512, 64, 512
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    return make_tiny_model("llama-quant", str(tmp_path_factory.mktemp("quant") / "dense"), cfg)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


# ---- GGUF -------------------------------------------------------------------------------------
def test_gguf_types_kept_quantized_generate_as_dequantized_and_as_transformers(dense_dir, root):
    path = write_gguf(dense_dir, str(root / "tiny.gguf"), GGUF_TYPES)
    quantized = _engine(path, quantization="gguf")
    kept = _kept(quantized)
    assert sum(kept.values()) == 9 and {f"GGUF {t}" for t in set(GGUF_TYPES.values())} == set(kept), kept
    got = _generate(quantized)
    del quantized
    assert got == _generate(_engine(path)), "kept quantized != dequantized at load (--dtype float32)"
    want = hf_greedy(str(root), PROMPTS, NEW_TOKENS, gguf_file="tiny.gguf")
    for prompt, g, w in zip(PROMPTS, got, want):
        assert_greedy_matches(str(root), prompt, g, w, "GGUF vs transformers")


def test_default_model_keeps_its_blocks_when_asked_and_loads_dense_otherwise():
    """SmolLM2's Q4_1 GGUF: with `--quantization gguf` its Q4_1 layers keep their blocks (the
    platform's kernels where it has them, as octavo-cpu does, else core's method) and it still
    answers as transformers does (DESIGN.md: " Paris."); with no options it loads dequantized,
    which runs fastest today (docs/quantization.md)."""
    from octavo.layers.linear import Linear

    def kept_layers(llm) -> int:
        linears = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, Linear)]
        return sum(getattr(m.method, "scheme", None) is not None for m in linears)

    llm = LLM("smollm2", device="cpu", max_model_len=64, kv_cache_memory="16MiB", quantization="gguf")
    assert kept_layers(llm) == 4 * 30  # every projection but the tied lm_head
    (out,) = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert out.outputs[0].text.startswith(" Paris.")
    del llm
    assert kept_layers(LLM("smollm2", device="cpu", max_model_len=64, kv_cache_memory="16MiB")) == 0


# ---- checkpoints with a quantization_config ----------------------------------------------------
WEIGHT_ONLY = {
    "gptq": lambda src, dst, dense: write_gptq(src, dst, dense, group=32, act_order=False),
    "gptq-act-order": lambda src, dst, dense: write_gptq(src, dst, dense, group=128, act_order=True),
    "awq": lambda src, dst, dense: write_awq(src, dst, dense, group=64),
    "compressed-tensors-int4": lambda src, dst, dense: write_compressed_tensors(src, dst, dense, "int4"),
}


@pytest.mark.parametrize("fmt", list(WEIGHT_ONLY))
def test_weight_only_checkpoint_generates_as_its_dequantized_weights(dense_dir, root, fmt):
    """The quantized checkpoint against transformers on the quantizer's dequantized weights; for
    GPTQ also against this engine on them (the engine and transformers agree on dense weights:
    tests/test_equivalence.py; one engine start per format keeps the file quick)."""
    quant, dense = str(root / fmt), str(root / f"{fmt}-dense")
    WEIGHT_ONLY[fmt](dense_dir, quant, dense)
    llm = _engine(quant)
    assert sum(_kept(llm).values()) == 8, _kept(llm)  # qkv, o, gate_up, down of both layers; lm_head dense
    got = _generate(llm)
    del llm
    for prompt, g, w in zip(PROMPTS, got, hf_greedy(dense, PROMPTS, NEW_TOKENS)):
        assert_greedy_matches(dense, prompt, g, w, f"{fmt} vs transformers on its dequantized weights")
    if fmt == "gptq":
        assert got == _generate(_engine(dense)), f"{fmt} != the engine on its dequantized weights"


def _hf_with_quantized_inputs(path: str, kind: str) -> list[list[int]]:
    """transformers' greedy tokens on dense weights `path`, every decoder linear rounding its
    input per token as a W8A8 layer does (the kit's definition)."""
    from tiny_models import _load_hf

    model = _load_hf(path, None)
    hooks = [
        m.register_forward_pre_hook(lambda _, args: (quantize_activations(args[0], kind),))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("model.layers")
    ]
    try:
        return hf_greedy(path, PROMPTS, NEW_TOKENS)
    finally:
        for h in hooks:
            h.remove()


#: W8A8 checkpoints: (writer, activation rounding, the scheme their layers run)
W8A8 = {
    "compressed-tensors-int8": (
        lambda src, dst, dense: write_compressed_tensors(src, dst, dense, "int8"),
        "int8",
        "int8 (per-channel, dynamic int8 activations)",
    ),
    "compressed-tensors-fp8": (
        lambda src, dst, dense: write_compressed_tensors(src, dst, dense, "fp8"),
        "fp8",
        "fp8 (per-channel, dynamic fp8 activations)",
    ),
    "fp8-block": (write_fp8_block, "fp8", "fp8 (group 128, dynamic fp8 activations)"),
}


@pytest.mark.parametrize("fmt", list(W8A8))
def test_w8a8_checkpoint_generates_as_transformers_with_the_same_rounding(dense_dir, root, fmt):
    writer, kind, scheme = W8A8[fmt]
    quant, dense = str(root / fmt), str(root / f"{fmt}-dense")
    writer(dense_dir, quant, dense)
    llm = _engine(quant)
    assert _kept(llm) == {scheme: 8}
    got = _generate(llm)
    want = _hf_with_quantized_inputs(dense, kind)
    for prompt, g, w in zip(PROMPTS, got, want):
        assert_greedy_matches(dense, prompt, g, w, f"{fmt} vs transformers")


# ---- what is refused ----------------------------------------------------------------------------
def _with_config(dense_dir: str, dst, quantization_config: dict) -> str:
    shutil.copytree(dense_dir, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = quantization_config
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return str(dst)


@pytest.mark.parametrize(
    "quantization_config,message",
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes' is not supported; supported: GGUF"),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "GPTQ with 8 bits is not supported; supported: 4"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 16}, "group size 16 is not supported; supported: 32, 64"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "supported: the GEMM layout"),
        ({"quant_method": "fp8", "activation_scheme": "static"}, "activation_scheme 'static' is not supported"),
    ],
    ids=["bitsandbytes", "gptq-8bit", "group-16", "awq-gemv", "fp8-static"],
)
def test_unsupported_checkpoints_are_refused_naming_what_is_supported(
    dense_dir, tmp_path, quantization_config, message
):
    path = _with_config(dense_dir, tmp_path / "m", quantization_config)
    with pytest.raises(QuantizationError, match=message.replace("(", r"\(")):
        _engine(path)


def test_quantization_option_must_match_the_checkpoint(dense_dir, root):
    with pytest.raises(
        QuantizationError, match="--quantization awq .* was asked for, but the checkpoint is not quantized"
    ):
        _engine(dense_dir, quantization="awq")
    with pytest.raises(QuantizationError, match="--quantization awq .* but the checkpoint is gguf"):
        LLM("smollm2", quantization="awq")  # vLLM's spelling, on the default model
    with pytest.raises(QuantizationError, match="'int3' is not supported; supported: GGUF"):
        _engine(dense_dir, quantization="int3")
    gguf_path = str(root / "mismatch.gguf")
    write_gguf(dense_dir, gguf_path, {"model.layers.0.mlp.down_proj": "Q8_0"})
    with pytest.raises(
        QuantizationError, match="gptq_marlin .* was asked for, but the checkpoint is gguf: .* pass gguf"
    ):
        _engine(gguf_path, quantization="gptq_marlin")
