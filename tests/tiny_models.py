"""Tiny random-weight models of every supported architecture, saved as HF directories.

Weights are drawn with a large init range so logits are well separated: greedy
comparisons against transformers then test the graph, not float32 tie-breaking.
"""

from __future__ import annotations

import functools
import os
import zlib

import torch

#: the Llama graph's first architectures, which test_equivalence runs on long prompts
LLAMA_ARCHS = ("llama", "qwen2", "qwen3", "mistral")
#: the architectures after them (and config variants the Llama files serve), which
#: test_architectures runs with chunked prefill and prefix-cache hits
NEWER_ARCHS = ("qwen2.5", "mistral-nemo", "phi3", "granite", "olmo2", "gemma2", "gemma3")
TINY_ARCHS = LLAMA_ARCHS + NEWER_ARCHS

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.3,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from octavo.loader.source import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source("smollm2"))


def tiny_config(arch: str):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GraniteConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    vocab = len(smollm2_tokenizer())
    if arch == "llama":  # Llama 3.1 style: llama3 rope scaling, untied embeddings
        return LlamaConfig(
            **_COMMON,
            vocab_size=vocab,
            head_dim=16,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if arch == "qwen2":  # q/k/v bias, tied embeddings
        return Qwen2Config(**{**_COMMON, "tie_word_embeddings": True}, vocab_size=vocab)
    if arch == "qwen3":  # per-head q/k RMSNorm, head_dim != hidden/heads
        return Qwen3Config(**_COMMON, vocab_size=vocab, head_dim=32)
    if arch == "mistral":  # sliding-window attention, shorter than the long prompts
        return MistralConfig(**_COMMON, vocab_size=vocab, sliding_window=48)
    if arch == "qwen2.5":  # Qwen2.5-7B style: untied, rope base 1e6, the sliding window switched off
        return Qwen2Config(
            **_COMMON,
            vocab_size=vocab,
            rope_theta=1e6,
            use_sliding_window=False,
            sliding_window=16,
            max_window_layers=1,
        )
    if arch == "mistral-nemo":  # head_dim set explicitly (not hidden / heads), no window
        return MistralConfig(**_COMMON, vocab_size=vocab, head_dim=32, sliding_window=None, rope_theta=1e6)
    if arch == "phi3":  # Phi-4-mini style: LongRoPE, partial rotary; a pretraining length past the tests' lengths
        return Phi3Config(**{**_COMMON, "tie_word_embeddings": True}, vocab_size=vocab, **phi3_rope(512))
    if arch == "granite":  # the four multipliers
        return GraniteConfig(
            **_COMMON,
            vocab_size=vocab,
            embedding_multiplier=4.0,
            attention_multiplier=0.1,
            residual_multiplier=0.5,
            logits_scaling=2.0,
        )
    if arch == "olmo2":  # post-norms, q/k norms over the whole projections
        return Olmo2Config(**_COMMON, vocab_size=vocab)
    if arch == "gemma2":  # sliding / global layers, soft-capped scores and logits, q scale != head_dim ** -0.5
        return Gemma2Config(
            **{**_COMMON, "num_hidden_layers": 3, "tie_word_embeddings": True},
            vocab_size=vocab,
            head_dim=32,
            query_pre_attn_scalar=24,
            sliding_window=16,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    if arch == "gemma3":  # q/k norms, a global layer every second one, local and (scaled) global rope
        return Gemma3TextConfig(
            **{**_COMMON, "num_hidden_layers": 3, "tie_word_embeddings": True},
            vocab_size=vocab,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            },
        )
    raise ValueError(arch)


def phi3_rope(original_max_position_embeddings: int) -> dict:
    """Phi-3 config fields of a LongRoPE model pretrained on that many positions (rot_dim 8)."""
    return dict(
        partial_rotary_factor=0.5,
        original_max_position_embeddings=original_max_position_embeddings,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0, 1.5, 2.0, 4.0],
            "long_factor": [2.0, 4.0, 8.0, 16.0],
        },
    )


def make_tiny_model(arch: str, path: str, config=None) -> str:
    """Save a random-weight model of `arch` (or of `config`, a variant of tiny_config(arch))."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(zlib.crc32(arch.encode()) % 1000)  # str hash() differs per process
    model = AutoModelForCausalLM.from_config(config or tiny_config(arch), dtype=torch.float32)
    with torch.no_grad():  # give norms some spread too, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "bias" in name:
                p.normal_(0, 0.3)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    smollm2_tokenizer().save_pretrained(path)
    return path


@functools.lru_cache(maxsize=8)
def _load_hf(path: str, gguf_file: str | None):
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()


@torch.inference_mode()
def hf_greedy(
    path: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    gguf_file: str | None = None,
    attn_implementation: str = "eager",
) -> list[list[int]]:
    """Greedy continuation of each prompt by transformers, one prompt at a time, no padding,
    never stopping at EOS (the engine side runs with ignore_eos)."""
    model = _load_hf(path, gguf_file)
    model.config._attn_implementation = attn_implementation
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        res = model(x, use_cache=True)
        past = res.past_key_values
        tok = int(res.logits[0, -1].argmax())
        gen = [tok]
        for _ in range(max_new_tokens - 1):
            res = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past = res.past_key_values
            tok = int(res.logits[0, -1].argmax())
            gen.append(tok)
        outs.append(gen)
    return outs


def assert_greedy_matches(path: str, prompt: list[int], got: list[int], want: list[int], what: str) -> None:
    """`got` equals transformers' greedy `want`, or first leaves it where transformers itself
    scores both tokens within float32 noise (a tie that another CPU's kernels may break the
    other way); anything after such a tie follows a different context and is not compared."""
    if got == want:
        return
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    assert k < len(got) and k < len(want), f"{what}: lengths differ: {got} != {want}"
    with torch.inference_mode():
        row = _load_hf(path, None)(torch.tensor([prompt + want[:k]])).logits[0, -1].float().log_softmax(-1)
    gap = float(row[want[k]] - row[got[k]])
    assert gap < 1e-4, f"{what}: token {k} is {got[k]}, transformers' {want[k]} by {gap:.2e} nats: {got} != {want}"


def random_prompts(n: int, lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


#: encoder (bidirectional) families, served as pooling models (test_pooling)
ENCODER_ARCHS = ("bert", "xlm-roberta")


def tiny_encoder_config(arch: str, num_labels: int = 2):
    """A tiny BERT or XLM-RoBERTa config on SmolLM2's vocabulary (XLM-R: one token type,
    positions offset by its padding index)."""
    from transformers import BertConfig, XLMRobertaConfig

    common = dict(
        vocab_size=len(smollm2_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        initializer_range=0.3,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if arch == "bert":
        return BertConfig(**common, max_position_embeddings=256, type_vocab_size=2, pad_token_id=0)
    return XLMRobertaConfig(**common, max_position_embeddings=258, type_vocab_size=1, pad_token_id=1)
