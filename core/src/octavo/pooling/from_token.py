"""A classifier read from a causal LM's head (hf_overrides' `classifier_from_token`), as vLLM
builds it: the head's rows of the named vocabulary tokens become the `score` layer, one of
vLLM's two `method`s deciding how (models/pooling_heads.py loads the rows)."""

from __future__ import annotations

#: two tokens make one label, row(second) - row(first): its sigmoid is softmax over the two
#: logits' second entry (Qwen3-Reranker's p("yes") against p("no"), mxbai-rerank-v2)
TWO_WAY = "from_2_way_softmax"
#: one label per token, the rows as they are (bge-reranker-v2-gemma's ["Yes"]: a sigmoid)
AS_IS = "no_post_processing"


def resolve_classifier_from_token(hf_config, tokenizer) -> None:
    """Check `classifier_from_token` and `method`, and set on the config the tokens' ids,
    the method, the number of labels, and vLLM's `use_pad_token` default for such rerankers
    (False: a pair is scored as its two texts joined, pooling/pairs.py)."""
    tokens = hf_config.classifier_from_token
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
        raise ValueError(f"classifier_from_token must be a list of tokens, e.g. ['no', 'yes']; got {tokens!r}")
    method = getattr(hf_config, "method", None)
    if method is None:
        # vLLM: is_original_qwen3_reranker names the two-way method; Octavo also takes it
        # for any two tokens given without a method (vLLM refuses those)
        two_way = getattr(hf_config, "is_original_qwen3_reranker", False) or len(tokens) == 2
        method = TWO_WAY if two_way else AS_IS
    if method not in (TWO_WAY, AS_IS):
        raise ValueError(f"hf_overrides' method must be {TWO_WAY!r} or {AS_IS!r}, got {method!r}")
    if method == TWO_WAY and len(tokens) != 2:
        raise ValueError(f"method {TWO_WAY!r} takes two tokens (the 'no' and the 'yes' one), got {tokens!r}")
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(
            f"classifier_from_token: {missing!r} not in this model's vocabulary; tokens are looked up as "
            "spelled in the tokenizer's vocabulary, as vLLM does (e.g. 'Ġyes' for ' yes' in a byte-level BPE)"
        )
    hf_config.classifier_from_token_ids = [vocab[t] for t in tokens]
    hf_config.method = method
    hf_config.num_labels = 1 if method == TWO_WAY else len(tokens)
    if getattr(hf_config, "use_pad_token", None) is None:
        hf_config.use_pad_token = False
