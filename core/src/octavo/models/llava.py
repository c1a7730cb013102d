"""LLaVA-1.5: a CLIP vision tower, a two-layer projector, and a text model (Llama, Mistral,
Qwen2, ...). Each `<image>` of the prompt is expanded by the processor to one token per
patch; the projected features of the tower's `vision_feature_layer` replace them."""

from __future__ import annotations

import torch
from torch import nn

from octavo.models.clip import CLIPVisionTower, vision_activation
from octavo.models.vision_language import VisionLanguageModel, language_model_name
from octavo.platform import Platform


class LlavaProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, act: str, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.act = vision_activation(act)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(VisionLanguageModel):
    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)
        vc = hf_config.vision_config
        if vc.model_type != "clip_vision_model":
            raise ValueError(f"LLaVA's vision tower {vc.model_type!r} is not supported; supported: clip_vision_model")
        layer = hf_config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"vision_feature_layer {layer!r}: only one feature layer is supported")
        strategy = hf_config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported; supported: default, full")
        self.drop_cls = strategy == "default"  # "default" drops the class token's features
        # hidden_states[k] is the output of k layers (0: the embeddings), negative k counts from the end
        self.vision_tower = CLIPVisionTower(vc, layer if layer >= 0 else vc.num_hidden_layers + 1 + layer)
        self.multi_modal_projector = LlavaProjector(
            vc.hidden_size,
            hf_config.get_text_config().hidden_size,
            hf_config.projector_hidden_act,
            getattr(hf_config, "multimodal_projector_bias", True),
        )

    @torch.no_grad()
    def encode_images(self, items) -> list[torch.Tensor]:
        """Each image's features in the language model's embedding space, [tokens, hidden]."""
        p = self.multi_modal_projector.linear_1.weight
        pixels = torch.cat([it.data["pixel_values"] for it in items]).to(p.device, p.dtype)
        features = self.vision_tower(pixels)
        if self.drop_cls:
            features = features[:, 1:]
        return list(self.multi_modal_projector(features))

    # ---- the processor's outputs ------------------------------------------------------------
    @staticmethod
    def image_token_id(hf_config) -> int:
        return int(getattr(hf_config, "image_token_id", None) or hf_config.image_token_index)

    @staticmethod
    def split_images(outputs, n: int) -> list[dict]:
        pixels = outputs["pixel_values"]
        return [{"pixel_values": pixels[i : i + 1]} for i in range(n)]

    @staticmethod
    def image_num_tokens(data: dict, hf_config) -> int:
        vc = hf_config.vision_config
        patches = (vc.image_size // vc.patch_size) ** 2
        return patches if hf_config.vision_feature_select_strategy == "default" else patches + 1

    # ---- weights ----------------------------------------------------------------------------
    def route_weight(self, name: str) -> tuple[str, str] | None:
        lm = language_model_name(name)
        if lm is not None:
            return "lm", lm
        name = name.removeprefix("model.")
        if name.startswith("vision_tower."):
            tower = self.vision_tower.weight_name(name[len("vision_tower.") :])
            return None if tower is None else ("own", "vision_tower." + tower)
        return "own", name
