"""A cross-encoder's prompt for a (query, document) pair, as vLLM tokenizes it for `score`
and `rerank`: a BERT-style cross-encoder gets the tokenizer's sentence-pair form ([CLS] a
[SEP] b [SEP], with its token types); a causal LM turned into a reranker (hf_overrides'
`classifier_from_token`, Qwen3-Reranker) gets the two texts joined into one string, the way
its prompt template was written to be read (vLLM's `use_pad_token` False). The two differ
where the join falls inside a word or after whitespace: a byte-level BPE merges across it."""

from __future__ import annotations


def pair_token_ids(tokenizer, hf_config, first: str, second: str) -> list[int]:
    if getattr(hf_config, "use_pad_token", True):
        return tokenizer(first, text_pair=second)["input_ids"]
    return tokenizer(first + second)["input_ids"]
