"""What LLaVA and Qwen2-VL share: a vision encoder beside one of the text models here.

The language model is the text config's own class (Llama, Qwen2, ...), built unchanged; this
wrapper delegates the KV cache, logits and rotary table to it and runs its layers from
input embeddings, where the runner (octavo.multimodal.encoder_cache) has put each image's
encoder output on its placeholder tokens. A subclass supplies the encoder (`encode_images`)
and says how its processor's outputs read (`split_images`, `image_num_tokens`, ...).

One process runs the whole model: tensor and pipeline parallelism are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from octavo.platform import Platform


class VisionLanguageModel(nn.Module):
    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__()
        comm = platform.communicator
        if comm.world_size > 1 or getattr(getattr(comm, "stage", None), "size", 1) > 1:
            raise ValueError(
                f"{type(self).__name__} runs in one process: use tensor_parallel_size=1 (and one pipeline stage)"
            )
        self.platform = platform
        self.config = hf_config
        text = hf_config.get_text_config()
        if getattr(text, "tie_word_embeddings", None) is None:  # Qwen2-VL keeps it on the outer config
            text.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.language_model = self.language_model_class(text)(platform, text, max_positions)

    @staticmethod
    def language_model_class(text_config):
        """The text model's class: the registry's for the text config."""
        from octavo.models import get_model_class

        return get_model_class(text_config)

    # ---- the language model's parts, as the runner reads them ----------------------------
    @property
    def cos_sin_cache(self) -> torch.Tensor:
        return self.language_model.cos_sin_cache

    @cos_sin_cache.setter
    def cos_sin_cache(self, value: torch.Tensor) -> None:
        self.language_model.cos_sin_cache = value

    @property
    def lm_head(self):
        return self.language_model.lm_head

    def attention_specs(self):
        return self.language_model.attention_specs()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed(input_ids)

    def structure(self):
        """The text model's: a platform may run text-only steps its own way with it (a CPU's
        one-call decode). Steps with image tokens never reach it: core's runner gives them
        their embeddings through the model's forward (octavo.multimodal.encoder_cache)."""
        return self.language_model.structure()

    def forward(self, input_ids, positions, kv_caches: list, meta, inputs_embeds=None):
        return self.decode(input_ids, positions, self.cos_sin_cache, kv_caches, meta, inputs_embeds)

    def decode(self, input_ids, positions, cos_sin, kv_caches: list, meta, inputs_embeds=None):
        """The language model's layers and final norm over `inputs_embeds` (the token
        embeddings where None), with rotary angles `cos_sin[positions]`."""
        lm = self.language_model
        x = lm.embed(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for layer, kv in zip(lm.layers, kv_caches):
            x, residual = layer(x, residual, positions, cos_sin, kv, meta)
        x, _ = lm.norm(x, residual)
        return x

    # ---- the processor's outputs ----------------------------------------------------------
    @staticmethod
    def image_token_id(hf_config) -> int:
        """The placeholder token's id (each subclass reads it from its config)."""
        raise NotImplementedError

    @classmethod
    def image_placeholder(cls, tokenizer, hf_config) -> str:
        """The text that stands for one image in a prompt: its placeholder token."""
        return tokenizer.convert_ids_to_tokens(cls.image_token_id(hf_config))

    # ---- weights ------------------------------------------------------------------------
    def route_weight(self, name: str) -> tuple[str, str] | None:
        """("lm", the language model's name) or ("own", this wrapper's parameter), or None
        for a checkpoint weight this model does not use."""
        raise NotImplementedError

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The language model's weights go to its own load_weights (which checks them); the
        encoder's and projector's are copied here by name, and every one must come."""
        lm_ids = {id(p) for p in self.language_model.parameters()}
        own = {n: p for n, p in self.named_parameters() if id(p) not in lm_ids}
        seen: set[str] = set()

        def language_model_weights() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                route = self.route_weight(name)
                if route is None:
                    continue
                kind, key = route
                if kind == "lm":
                    yield key, tensor
                    continue
                param = own.get(key)
                if param is None:
                    raise ValueError(f"unexpected weight {name!r} for {type(self).__name__}")
                if tuple(param.shape) != tuple(tensor.shape):
                    raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
                param.copy_(tensor)
                seen.add(key)

        self.language_model.load_weights(language_model_weights())
        missing = sorted(set(own) - seen)
        if missing:
            raise ValueError(f"checkpoint is missing weights for: {', '.join(missing[:8])}")


def language_model_name(name: str) -> str | None:
    """A checkpoint name under the language model, as the text model's loader reads it, in
    both layouts transformers writes (`language_model.model.layers...`, `language_model
    .lm_head...`; and since 5.0 `model.language_model.layers...`, `lm_head...`); None when
    `name` is not the language model's."""
    if name.startswith("language_model."):
        return name[len("language_model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("lm_head."):
        return name
    return None
