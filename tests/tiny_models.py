"""Tiny random-weight models of every supported architecture, saved as HF directories.

Weights are drawn with a large init range so logits are well separated: greedy
comparisons against transformers then test the graph, not float32 tie-breaking.
"""

from __future__ import annotations

import functools
import os

import torch

TINY_ARCHS = ("llama", "qwen2", "qwen3", "mistral")

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
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

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
    raise ValueError(arch)


def make_tiny_model(arch: str, path: str, config=None) -> str:
    """Save a random-weight model of `arch` (or of `config`, a variant of tiny_config(arch))."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(hash(arch) % 1000)
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


def random_prompts(n: int, lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]
