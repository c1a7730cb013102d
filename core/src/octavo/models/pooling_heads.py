"""The Llama-family bodies as pooling models: without the language-model head
(`LlamaModel`, `MistralModel`, ...: E5-Mistral, Qwen3-Embedding checkpoints) and with a
sequence-classification head (`*ForSequenceClassification`: `score`, a linear layer over
the pooled hidden state, no bias)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from octavo.layers.linear import Linear
from octavo.models.llama import LlamaForCausalLM
from octavo.models.qwen2 import Qwen2ForCausalLM
from octavo.models.qwen3 import Qwen3ForCausalLM
from octavo.pooling.from_token import TWO_WAY


class _Headless:
    """Mixed in before a LlamaForCausalLM class: its body only, the final norm's output."""

    def __init__(self, platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)  # type: ignore[call-arg]
        del self.lm_head  # type: ignore[attr-defined]
        self.tie_word_embeddings = True  # no lm_head weight is expected, nor loaded

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise ValueError("a pooling model has no language-model head: it cannot generate text")


class _Classifier(_Headless):
    def __init__(self, platform, hf_config, max_positions: int) -> None:
        #: a classifier read from the language-model head's rows of these tokens (hf_overrides'
        #: `classifier_from_token`, `apply_hf_overrides`): Qwen3-Reranker's "no" and "yes"
        self.from_token_ids: list[int] | None = getattr(hf_config, "classifier_from_token_ids", None)
        self.from_token_method: str | None = getattr(hf_config, "method", None)
        self.lm_head_tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        super().__init__(platform, hf_config, max_positions)
        self.score = Linear(hf_config.hidden_size, hf_config.num_labels, platform.linear)

    def _target(self, name: str):
        if name == "score.weight":
            return self.score.weight, None, None
        return super()._target(name)  # type: ignore[misc]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.from_token_ids is None:
            return super().load_weights(weights)  # type: ignore[misc]
        return super().load_weights(self._score_from_head(weights))  # type: ignore[misc]

    def _score_from_head(self, weights: Iterable[tuple[str, torch.Tensor]]):
        """The checkpoint's tensors, then `score.weight` built from the head's rows of the
        tokens (the embedding's where the head is tied to it): for the two-way method their
        difference, since softmax over two logits is the sigmoid of their difference."""
        assert self.from_token_ids is not None
        source = "model.embed_tokens.weight" if self.lm_head_tied else "lm_head.weight"
        rows = None
        for name, tensor in weights:
            if name in (source, source.removeprefix("model.")):
                rows = tensor[self.from_token_ids].float()
            if name != "lm_head.weight":
                yield name, tensor
        if rows is None:
            raise ValueError(
                f"classifier_from_token reads the language-model head, but the checkpoint has no {source!r}"
            )
        yield "score.weight", (rows[1] - rows[0])[None] if self.from_token_method == TWO_WAY else rows


class LlamaModel(_Headless, LlamaForCausalLM):
    pass


class Qwen2Model(_Headless, Qwen2ForCausalLM):
    pass


class Qwen3Model(_Headless, Qwen3ForCausalLM):
    pass


class LlamaForSequenceClassification(_Classifier, LlamaForCausalLM):
    pass


class Qwen2ForSequenceClassification(_Classifier, Qwen2ForCausalLM):
    pass


class Qwen3ForSequenceClassification(_Classifier, Qwen3ForCausalLM):
    pass
