"""The Llama-family bodies as pooling models: without the language-model head
(`LlamaModel`, `MistralModel`, ...: E5-Mistral, Qwen3-Embedding checkpoints) and with a
sequence-classification head (`*ForSequenceClassification`: `score`, a linear layer over
the pooled hidden state, no bias)."""

from __future__ import annotations

import torch

from octavo.layers.linear import Linear
from octavo.models.llama import LlamaForCausalLM
from octavo.models.qwen2 import Qwen2ForCausalLM
from octavo.models.qwen3 import Qwen3ForCausalLM


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
        super().__init__(platform, hf_config, max_positions)
        self.score = Linear(hf_config.hidden_size, hf_config.num_labels, platform.linear)

    def _target(self, name: str):
        if name == "score.weight":
            return self.score.weight, None, None
        return super()._target(name)  # type: ignore[misc]


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
