"""CLIP's and SigLIP's vision transformers (LLaVA's vision towers), up to the layer whose
features the language model reads: pre-norm blocks of bidirectional attention over one image's
patches (CLIP: and its class token, and a LayerNorm before the first block). Images attend
within themselves only, so a batch of images is one [N, tokens, hidden] tensor and torch's
scaled_dot_product_attention.

Parameter names are the checkpoint's (`embeddings.patch_embedding.weight`, `encoder.layers.3
.mlp.fc1.bias`, ...): `load_weights` copies by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the vision configs' hidden_act -> the activation
VISION_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def vision_activation(name: str):
    if name not in VISION_ACTIVATIONS:
        raise ValueError(f"vision activation {name!r} is not supported; supported: {', '.join(VISION_ACTIVATIONS)}")
    return VISION_ACTIVATIONS[name]


class CLIPAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(n, t, d))


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str) -> None:
        super().__init__()
        self.act = vision_activation(act)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg, class_token: bool) -> None:
        super().__init__()
        self.image_size, self.patch_size = cfg.image_size, cfg.patch_size
        num_positions = (cfg.image_size // cfg.patch_size) ** 2 + class_token  # the patches (and the class token)
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False) if class_token else None
        # SigLIP's patch projection has a bias, CLIP's none
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=not class_token)
        self.position_embedding = nn.Embedding(num_positions, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"the vision tower takes {self.image_size}x{self.image_size} images, got "
                f"{tuple(pixel_values.shape[-2:])}: the checkpoint's processor resizes them"
            )
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [N, patches, hidden]
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight


class CLIPEncoder(nn.Module):
    def __init__(self, cfg, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(num_layers))


#: the vision configs' model_type -> whether the tower has CLIP's class token and first LayerNorm
TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}


class CLIPVisionTower(nn.Module):
    """Hidden states after the first `num_layers` encoder layers (no post-norm): what
    transformers' CLIPVisionModel / SiglipVisionModel return as hidden_states[num_layers]."""

    def __init__(self, cfg, num_layers: int) -> None:
        super().__init__()
        if cfg.model_type not in TOWERS:
            raise ValueError(f"vision tower {cfg.model_type!r} is not supported; supported: {', '.join(TOWERS)}")
        if not 0 <= num_layers <= cfg.num_hidden_layers:
            raise ValueError(f"the vision tower has {cfg.num_hidden_layers} layers, {num_layers} asked for")
        self.class_token = TOWERS[cfg.model_type]
        self.embeddings = CLIPEmbeddings(cfg, self.class_token)
        if self.class_token:
            self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: the checkpoint's name
        self.encoder = CLIPEncoder(cfg, num_layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        if self.class_token:
            x = self.pre_layrnorm(x)
        for layer in self.encoder.layers:
            x = layer(x)
        return x

    def weight_name(self, name: str) -> str | None:
        """A checkpoint name (after `vision_tower.`) as this tower's parameter, or None for
        weights it does not use (layers past num_layers, the post-norm, SigLIP's pooling head)."""
        name = name.removeprefix("vision_model.")
        parts = name.split(".")
        if parts[0] in ("post_layernorm", "head"):
            return None
        if parts[:2] == ["encoder", "layers"] and int(parts[2]) >= len(self.encoder.layers):
            return None
        return name
