"""End to end: greedy generation on a tiny random-weight Llama matches a trusted run.

Kernel checks can miss what only a whole model shows (a layout the runner and the
kernel disagree on, a stale cache across steps). The trusted run is the cpu platform
for any other platform, and Hugging Face transformers for cpu itself.
"""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    [5, 17, 99, 3, 42],  # short
    list(range(10, 51)),  # longer than a few blocks, so decodes cross block boundaries
    [7],  # one-token prompt
]
MAX_TOKENS = 8
VOCAB = 128


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """config.json + model.safetensors + tokenizer for a 2-layer Llama with GQA."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # wide weights spread the logits, so greedy picks are not near-ties that
        # rounding order could flip between two correct implementations
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    model.save_pretrained(path)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2", unk_token="w0").save_pretrained(path)
    return path


def _octavo_greedy(model_dir, device: str) -> list[list[int]]:
    from octavo import LLM, SamplingParams

    llm = LLM(model=str(model_dir), device=device, dtype="float32", kv_cache_memory="64MiB")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _hf_greedy(model_dir) -> list[list[int]]:
    """Full-sequence forward per step: no KV cache, nothing clever."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = list(prompt)
            for _ in range(MAX_TOKENS):
                logits = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.argmax()))
            results.append(ids[len(prompt) :])
    return results


@pytest.mark.octavo_kernel("generate")
def test_greedy_matches_trusted_run(octavo_platform, octavo_platform_name, tiny_llama_dir):
    try:
        from octavo import LLM  # noqa: F401
    except ImportError as e:
        pytest.skip(f"octavo.LLM is not available in this octavo ({e}); end-to-end check skipped")
    if torch.float32 not in octavo_platform.device.supported_dtypes:
        pytest.skip(f"{octavo_platform_name} does not support float32")
    from octavo.platform import discover_platforms

    cpu_usable = any(i.name == "cpu" and i.usable for i in discover_platforms())
    if octavo_platform_name != "cpu" and cpu_usable:
        trusted, want = "octavo device=cpu", _octavo_greedy(tiny_llama_dir, "cpu")
    else:
        trusted, want = "transformers", _hf_greedy(tiny_llama_dir)
    got = _octavo_greedy(tiny_llama_dir, octavo_platform_name)
    for prompt, g, w in zip(PROMPTS, got, want):
        assert g == w, (
            f"generate[model=tiny-llama, dtype=fp32, prompt_len={len(prompt)}]: greedy tokens {g} != {trusted}'s {w}"
        )
