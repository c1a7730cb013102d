"""LLaVA-1.5: a CLIP vision tower (or SigLIP's: LLaVA-Interleave), a two-layer projector, and a
text model (Llama, Mistral, Qwen2, ...). Each `<image>` of the prompt is expanded to one token
per patch (CLIP's class token dropped by the "default" feature strategy); the projected
features of the tower's `vision_feature_layer` replace them."""

from __future__ import annotations

import torch
from torch import nn

from octavo.models.clip import TOWERS, CLIPVisionTower, vision_activation
from octavo.models.vision_language import VisionLanguageModel, language_model_name
from octavo.multimodal.inputs import MultiModalInputError, embeds_tensor
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
        layer = hf_config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"vision_feature_layer {layer!r}: only one feature layer is supported")
        strategy = hf_config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported; supported: default, full")
        self.drop_first = strategy == "default"  # "default" drops the first token's features (CLIP's class token)
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
        if self.drop_first:
            features = features[:, 1:]
        return list(self.multi_modal_projector(features))

    # ---- the processor's outputs ------------------------------------------------------------
    @staticmethod
    def image_token_id(hf_config) -> int:
        return int(getattr(hf_config, "image_token_id", None) or hf_config.image_token_index)

    @staticmethod
    def split_images(outputs, n: int, hf_config) -> list[dict]:
        pixels = outputs["pixel_values"]
        return [{"pixel_values": pixels[i : i + 1]} for i in range(n)]

    @staticmethod
    def image_num_tokens(data: dict, hf_config) -> int:
        vc = hf_config.vision_config
        tokens = (vc.image_size // vc.patch_size) ** 2 + TOWERS.get(vc.model_type, True)  # + the class token
        return tokens - (hf_config.vision_feature_select_strategy == "default")

    @classmethod
    def split_image_embeds(cls, value, hf_config) -> list[dict]:
        """Embeddings given in place of images, as vLLM takes them: what the projector outputs,
        [num_images, feature_size, hidden_size] (or one image's [feature_size, hidden_size])."""
        hidden = hf_config.get_text_config().hidden_size
        tokens = cls._embeds_tokens(hf_config)
        shape = f"[num_images, {tokens or 'feature_size'}, {hidden}]"
        embeds = embeds_tensor(value, "image embeddings", shape, hidden)
        if embeds.dim() == 2:
            embeds = embeds[None]
        if embeds.dim() != 3 or embeds.shape[1] == 0 or tokens not in (None, embeds.shape[1]):
            raise MultiModalInputError(f"image embeddings must have shape {shape}, got {tuple(embeds.shape)}")
        return [{"image_embeds": e} for e in embeds]

    @classmethod
    def _embeds_tokens(cls, hf_config) -> int | None:
        """Each image's number of embeddings (None where it depends on the image's size)."""
        return cls.image_num_tokens({}, hf_config)

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


def best_resolution(height: int, width: int, resolutions) -> tuple[int, int]:
    """LLaVA-NeXT's canvas for an image (the processor's choice): of the (height, width)
    `resolutions`, the one that keeps the most of the image's pixels once it is scaled to fit,
    then the one that wastes the fewest."""
    best, most, waste = None, 0, float("inf")
    for h, w in resolutions:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        if kept > most or (kept == most and h * w - kept < waste):
            best, most, waste = (h, w), kept, h * w - kept
    assert best is not None, "image_grid_pinpoints is empty"
    return best


def unpadded_grid(height: int, width: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the feature grid [rows, cols] that holds the image of
    `height` x `width` once the padding its canvas added around it is cut away."""
    if width / height > cols / rows:  # padded above and below
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        return pad, rows - pad, 0, cols
    pad = (cols - int(round(width * (rows / height), 7))) // 2
    return 0, rows, pad, cols - pad


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-NeXT (LLaVA-1.6, "anyres"): the processor scales each image onto the canvas of
    `image_grid_pinpoints` that fits it best and cuts it into tiles of the tower's size, plus the
    whole image at that size. The whole image's features come first, then the tiles' features
    as one grid, the canvas' padding cut away, with `image_newline` after each row."""

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)
        hidden = hf_config.get_text_config().hidden_size
        self.image_newline = nn.Parameter(torch.empty(hidden), requires_grad=False)

    @staticmethod
    def _tiles(image_size, hf_config) -> tuple[int, int]:
        """(rows, columns) of tiles of an image of (height, width) `image_size`."""
        tile = hf_config.vision_config.image_size
        h, w = best_resolution(int(image_size[0]), int(image_size[1]), hf_config.image_grid_pinpoints)
        return h // tile, w // tile

    @torch.no_grad()
    def encode_images(self, items) -> list[torch.Tensor]:
        p = self.multi_modal_projector.linear_1.weight
        pixels = torch.cat([it.data["pixel_values"] for it in items]).to(p.device, p.dtype)
        features = self.vision_tower(pixels)
        if self.drop_first:
            features = features[:, 1:]
        features = self.multi_modal_projector(features)  # [all tiles, patches, hidden]
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        out = []
        for item, image in zip(items, features.split([it.data["pixel_values"].shape[0] for it in items])):
            height, width = (int(v) for v in item.data["image_sizes"][0])
            rows, cols = self._tiles((height, width), self.config)
            grid = (
                image[1:].view(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, -1)
            )
            top, bottom, left, right = unpadded_grid(height, width, rows * side, cols * side)
            grid = grid[top:bottom, left:right]
            newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, -1)
            out.append(torch.cat([image[0], torch.cat([grid, newline], dim=1).flatten(0, 1)]))
        return out

    @classmethod
    def split_images(cls, outputs, n: int, hf_config) -> list[dict]:
        """The processor pads every image's tiles to the most of the batch: keep each image's own."""
        out = []
        for i in range(n):
            size = outputs["image_sizes"][i : i + 1]
            rows, cols = cls._tiles(size[0].tolist(), hf_config)
            out.append({"pixel_values": outputs["pixel_values"][i, : 1 + rows * cols], "image_sizes": size})
        return out

    @classmethod
    def _embeds_tokens(cls, hf_config) -> int | None:
        return None  # the tiles' grid follows the image's size

    @classmethod
    def image_num_tokens(cls, data: dict, hf_config) -> int:
        """The whole image's tokens (as LLaVA's), and the tiles' grid without the canvas' padding,
        one newline per row."""
        vc = hf_config.vision_config
        side = vc.image_size // vc.patch_size
        height, width = (int(v) for v in data["image_sizes"][0])
        rows, cols = cls._tiles((height, width), hf_config)
        top, bottom, left, right = unpadded_grid(height, width, rows * side, cols * side)
        return LlavaForConditionalGeneration.image_num_tokens(data, hf_config) + (bottom - top) * (right - left + 1)
