"""Qwen2-VL and Qwen2.5-VL: a vision transformer over an image's 14x14 patches at its own
resolution (the processor picks the grid, `image_grid_thw`), a patch merger that turns each
2x2 block of patches into one token, and Qwen2 as the language model, whose rotary angles
come from 3-D positions (M-RoPE): temporal, height and width.

Vision transformer: 2-D rotary (each head's first half of frequencies rotates by the patch's
row, the second by its column), bidirectional attention within an image; Qwen2-VL uses
LayerNorm and a GELU MLP, Qwen2.5-VL RMSNorm, a gated SiLU MLP, and attention within windows
of `window_size` pixels except in `fullatt_block_indexes` layers. Qwen2.5-VL reorders the
merged tokens window by window before the blocks (so a window is a contiguous run) and
back after the merger, as transformers does.

Videos: frames in pairs (`temporal_patch_size`), each pair a temporal patch of the same grid,
which the vision transformer runs as an image of its own; a video's tokens are its temporal
patches' tokens one after another.

M-RoPE (`mrope_positions`, as transformers' get_rope_index computes it): text tokens sit at
the same position on the three axes, counting on from the previous token; an image's tokens
at (start, start + row, start + column) of its merged grid, a video's at (start + temporal
id, ...) where the temporal id counts its temporal patches (Qwen2.5-VL: times
`tokens_per_second * second_per_grid_t`, rounded down), and the text after either at start +
max(rows, columns). A generated token at position p sits at p + delta on all three axes,
counting on from the prompt's last token (which may lie below a video's temporal ids).
The rotary table's frequencies are split into `mrope_section` runs, one per axis: each
token's row of angles takes each run from its position on that axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from octavo.models.clip import vision_activation
from octavo.models.qwen2 import Qwen2ForCausalLM
from octavo.models.vision_language import VisionLanguageModel, language_model_name
from octavo.multimodal.inputs import MultiModalInputError, embeds_tensor
from octavo.platform import Platform


class VisionRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def _norm(rms: bool, size: int) -> nn.Module:
    return VisionRMSNorm(size) if rms else nn.LayerNorm(size, eps=1e-6)


class VisionAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

        def rotate(y: torch.Tensor) -> torch.Tensor:  # rotate-half over the whole head, in float32
            yf = y.float()
            y1, y2 = yf.chunk(2, dim=-1)
            return (yf * cos + torch.cat([-y2, y1], dim=-1) * sin).to(y.dtype)

        o = F.scaled_dot_product_attention(rotate(q), rotate(k), v, attn_mask=mask)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    """Qwen2-VL: fc2(act(fc1(x))); Qwen2.5-VL: down(act(gate(x)) * up(x)), all with bias."""

    def __init__(self, width: int, intermediate: int, act: str, gated: bool) -> None:
        super().__init__()
        self.act = vision_activation(act)
        self.gated = gated
        if gated:
            self.gate_proj = nn.Linear(width, intermediate)
            self.up_proj = nn.Linear(width, intermediate)
            self.down_proj = nn.Linear(intermediate, width)
        else:
            self.fc1 = nn.Linear(width, intermediate)
            self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, width: int, heads: int, intermediate: int, act: str, v2_5: bool) -> None:
        super().__init__()
        self.norm1 = _norm(v2_5, width)
        self.attn = VisionAttention(width, heads)
        self.norm2 = _norm(v2_5, width)
        self.mlp = VisionMLP(width, intermediate, act, gated=v2_5)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, out: int, width: int, merge: int, rms: bool) -> None:
        super().__init__()
        self.ln_q = _norm(rms, width)
        self.merged = width * merge**2  # a 2x2 block of patches, side by side
        self.mlp = nn.Sequential(nn.Linear(self.merged, self.merged), nn.GELU(), nn.Linear(self.merged, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, width] -> [B, n / merge^2, out]
        return self.mlp(self.ln_q(x).reshape(x.shape[0], -1, self.merged))


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(channels, width, kernel, kernel, bias=False)


class Qwen2VisionTransformer(nn.Module):
    inv_freq: torch.Tensor  # a buffer

    def __init__(self, vc, v2_5: bool) -> None:
        super().__init__()
        self.v2_5 = v2_5
        width = vc.hidden_size if v2_5 else vc.embed_dim
        out = vc.out_hidden_size if v2_5 else vc.hidden_size
        intermediate = vc.intermediate_size if v2_5 else int(vc.embed_dim * vc.mlp_ratio)
        self.in_channels, self.temporal, self.patch = vc.in_channels, vc.temporal_patch_size, vc.patch_size
        self.merge = vc.spatial_merge_size
        self.window = getattr(vc, "window_size", 0) // self.merge // self.patch if v2_5 else 0
        self.full_blocks = set(getattr(vc, "fullatt_block_indexes", ()) or ()) if v2_5 else None
        self.patch_embed = PatchEmbed(vc.in_channels, width, (vc.temporal_patch_size, vc.patch_size, vc.patch_size))
        self.blocks = nn.ModuleList(
            VisionBlock(width, vc.num_heads, intermediate, vc.hidden_act, v2_5) for _ in range(vc.depth)
        )
        self.merger = PatchMerger(out, width, self.merge, rms=v2_5)
        head_dim = width // vc.num_heads
        theta = float((getattr(vc, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
        half = head_dim // 2  # rows take the first half of each head's frequencies, columns the second
        inv_freq = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        """[h * w, 2] (row, column) of each patch, in the processor's order: 2x2 merge blocks
        one after another, row-major within and between them."""
        m = self.merge
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        return torch.stack([rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()], dim=-1)

    def _windows(self, h: int, w: int) -> tuple[torch.Tensor, list[int]]:
        """Qwen2.5-VL: the merged tokens' order window by window (row-major windows of
        `window` x `window` merged tokens, row-major inside), and each window's size."""
        gh, gw, s = h // self.merge, w // self.merge, self.window
        grid = torch.arange(gh * gw).view(gh, gw)
        order, sizes = [], []
        for y in range(0, gh, s):
            for x in range(0, gw, s):
                block = grid[y : y + s, x : x + s].flatten()
                order.append(block)
                sizes.append(block.numel())
        return torch.cat(order), sizes

    def forward(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Images or videos of one grid (t, h, w) in patches: [B * t * h * w, C * T * P * P] ->
        [B, t * h * w / merge^2, out]."""
        t, h, w = grid
        n, unit = h * w, self.merge**2
        weight = self.patch_embed.proj.weight
        x = pixels.to(weight.device, weight.dtype).view(-1, self.in_channels, self.temporal, self.patch, self.patch)
        # a video's temporal patches (t of them, frames in pairs) attend each within itself, at the
        # same 2-D positions and windows as an image's: they run as a batch of t images
        x = self.patch_embed.proj(x).view(-1, n, weight.shape[0])
        freqs = (self._positions(h, w).to(x.device)[..., None].float() * self.inv_freq).flatten(1)  # [n, half]
        masks: dict[bool, torch.Tensor | None] = {True: None, False: None}
        order = None
        if self.v2_5:
            order, sizes = self._windows(h, w)
            order = order.to(x.device)
            x = x.view(x.shape[0], -1, unit, x.shape[-1])[:, order].flatten(1, 2)
            freqs = freqs.view(-1, unit, freqs.shape[-1])[order].flatten(0, 1)
            window_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes) * unit).to(x.device)
            masks[False] = window_of[:, None] == window_of[None, :]  # attend within the window only
        angles = torch.cat([freqs, freqs], dim=-1)
        cos, sin = angles.cos(), angles.sin()
        for i, block in enumerate(self.blocks):
            full = self.full_blocks is None or i in self.full_blocks
            x = block(x, cos, sin, masks[full])
        merged = self.merger(x)
        if order is not None:
            merged = merged[:, torch.argsort(order)]
        return merged.reshape(-1, t * merged.shape[1], merged.shape[2])


class Qwen2VLForConditionalGeneration(VisionLanguageModel):
    v2_5 = False
    mrope_axis: torch.Tensor  # a buffer

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)
        self.visual = Qwen2VisionTransformer(hf_config.vision_config, self.v2_5)
        sections = self.mrope_section(hf_config)
        rot = self.cos_sin_cache.shape[-1]
        if 2 * sum(sections) != rot:
            raise ValueError(f"mrope_section {sections} does not cover the {rot // 2} rotary frequencies")
        axis = torch.tensor([a for a, n in enumerate(sections) for _ in range(n)] * 2)
        self.register_buffer("mrope_axis", axis.view(1, 1, rot), persistent=False)

    @staticmethod
    def language_model_class(text_config):
        return Qwen2ForCausalLM

    @staticmethod
    def mrope_section(hf_config) -> list[int]:
        text = hf_config.get_text_config()
        params = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        return list(params["mrope_section"])

    def forward(self, input_ids, positions, kv_caches: list, meta, inputs_embeds=None, mrope_positions=None):
        if mrope_positions is None:  # text only: the three axes are the 1-D position
            return self.decode(input_ids, positions, self.cos_sin_cache, kv_caches, meta, inputs_embeds)
        t = mrope_positions.shape[1]
        table = self.cos_sin_cache[mrope_positions]  # [3, T, rot]: each axis' angles
        cos_sin = table.gather(0, self.mrope_axis.expand(1, t, -1)).squeeze(0)  # each run from its axis
        rows = torch.arange(t, device=cos_sin.device)
        return self.decode(input_ids, rows, cos_sin, kv_caches, meta, inputs_embeds)

    @torch.no_grad()
    def encode_images(self, items) -> list[torch.Tensor]:
        """Each image's merged tokens, [tokens, hidden]; images of one grid run as one batch."""
        by_grid: dict[tuple[int, int, int], list[int]] = {}
        for i, it in enumerate(items):
            t, h, w = (int(v) for v in it.data["image_grid_thw"][0])
            by_grid.setdefault((t, h, w), []).append(i)
        results: list[torch.Tensor] = [torch.empty(0)] * len(items)
        for grid, indices in by_grid.items():
            pixels = torch.cat([items[i].data["pixel_values"] for i in indices])
            for i, tokens in zip(indices, self.visual(pixels, grid)):
                results[i] = tokens
        return results

    # ---- M-RoPE ------------------------------------------------------------------------------
    @staticmethod
    def mrope_positions(prompt_ids: list[int], items, hf_config) -> tuple[torch.Tensor, int]:
        """([3, len(prompt_ids)] positions, delta) of a prompt and its images (module doc)."""
        merge = hf_config.vision_config.spatial_merge_size
        per_second = getattr(hf_config.vision_config, "tokens_per_second", None)  # Qwen2.5-VL's only
        parts = []
        pos = 0  # the next text position
        at = 0
        for item in items:
            if item.offset > at:
                parts.append(torch.arange(pos, pos + item.offset - at).expand(3, -1))
                pos += item.offset - at
            t, h, w = (int(v) for v in item.data["image_grid_thw"][0])
            gh, gw = h // merge, w // merge
            times = torch.arange(t)
            if "second_per_grid_t" in item.data and per_second:  # a video on Qwen2.5-VL: ids in time units
                times = (times * (per_second * item.data["second_per_grid_t"])).long()
            tt = times.view(t, 1, 1).expand(t, gh, gw)
            hh = torch.arange(gh).view(1, gh, 1).expand(t, gh, gw)
            ww = torch.arange(gw).view(1, 1, gw).expand(t, gh, gw)
            parts.append(torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + pos)
            pos += max(gh, gw)  # the text after it: past its rows and columns (not its temporal ids)
            at = item.end
        if at < len(prompt_ids):
            parts.append(torch.arange(pos, pos + len(prompt_ids) - at).expand(3, -1))
        positions = torch.cat(parts, dim=1)
        # generated tokens count on from the prompt's last token (transformers' generate), which
        # a video's temporal ids may pass (Qwen2.5-VL): not from the largest position
        last = int(positions[:, -1].max())
        return positions, last + 1 - len(prompt_ids)

    # ---- the processor's outputs ------------------------------------------------------------
    @staticmethod
    def image_token_id(hf_config) -> int:
        return int(hf_config.image_token_id)

    @classmethod
    def image_placeholder(cls, tokenizer, hf_config) -> str:
        """`<|vision_start|><|image_pad|><|vision_end|>`, as Qwen's chat template writes an image."""
        ids = [hf_config.vision_start_token_id, hf_config.image_token_id, hf_config.vision_end_token_id]
        return "".join(tokenizer.convert_ids_to_tokens(ids))

    @staticmethod
    def split_images(outputs, n: int, hf_config) -> list[dict]:
        grids = outputs["image_grid_thw"]
        pixels = outputs["pixel_values"].split([int(g.prod()) for g in grids])
        return [{"pixel_values": pixels[i], "image_grid_thw": grids[i : i + 1]} for i in range(n)]

    @staticmethod
    def image_num_tokens(data: dict, hf_config) -> int:
        return int(data["image_grid_thw"][0].prod()) // hf_config.vision_config.spatial_merge_size**2

    # ---- videos -------------------------------------------------------------------------------
    @staticmethod
    def video_token_id(hf_config) -> int:
        return int(hf_config.video_token_id)

    @classmethod
    def video_placeholder(cls, tokenizer, hf_config) -> str:
        ids = [hf_config.vision_start_token_id, hf_config.video_token_id, hf_config.vision_end_token_id]
        return "".join(tokenizer.convert_ids_to_tokens(ids))

    @staticmethod
    def process_video(image_processor, frames: list, fps: float, hf_config, size: dict | None = None) -> dict:
        """A video's frames as the encoder takes them, without transformers' video processor
        (it needs torchvision): each frame through the image processor (resize to a multiple of
        28, normalize, patches), the frames padded with the last to a multiple of
        `temporal_patch_size` (2) and paired, each patch holding its pair's two frames, as
        Qwen's temporal patches do. `size` ({"shortest_edge", "longest_edge"} in pixels): the
        checkpoint's video pixel bounds where they differ from its images'."""
        pair = hf_config.vision_config.temporal_patch_size
        frames = frames + frames[-1:] * (-len(frames) % pair)
        out = image_processor(images=frames, return_tensors="pt", **({"size": size} if size else {}))
        _, h, w = (int(v) for v in out["image_grid_thw"][0])
        t = len(frames) // pair
        # each frame's rows hold its pixels `pair` times over ([C, pair, P * P]): keep one copy per
        # frame and put a pair's frames on the temporal axis
        rows = out["pixel_values"].view(t, pair, h * w, -1, pair, hf_config.vision_config.patch_size**2)[..., 0, :]
        pixels = rows.permute(0, 2, 3, 1, 4).reshape(t * h * w, -1)
        return {"pixel_values": pixels, "image_grid_thw": torch.tensor([[t, h, w]]), "second_per_grid_t": pair / fps}

    @classmethod
    def split_image_embeds(cls, value, hf_config) -> list[dict]:
        """Embeddings given in place of images, as vLLM takes them: {"image_embeds": the merger's
        output of every image, [total_tokens, hidden_size], "image_grid_thw": [num_images, 3]};
        the grids give the M-RoPE positions and each image's share of the rows."""
        hidden = hf_config.get_text_config().hidden_size
        if not isinstance(value, dict) or set(value) != {"image_embeds", "image_grid_thw"}:
            raise MultiModalInputError(
                'image embeddings of this model are a dict {"image_embeds": [total_tokens, '
                f'{hidden}] tensor, "image_grid_thw": [num_images, 3] tensor}}'
            )
        grids = value["image_grid_thw"]
        if not isinstance(grids, torch.Tensor) or grids.dim() != 2 or grids.shape[1] != 3 or grids.is_floating_point():
            raise MultiModalInputError(
                f"image_grid_thw must be an integer tensor of shape [num_images, 3], got {grids!r}"
            )
        grids = grids.cpu()
        lengths = [cls.image_num_tokens({"image_grid_thw": g[None]}, hf_config) for g in grids]
        shape = f"[{sum(lengths)}, {hidden}]"
        embeds = embeds_tensor(value["image_embeds"], "image_embeds", shape + " (the grids' tokens)", hidden)
        if embeds.dim() != 2 or embeds.shape[0] != sum(lengths):
            raise MultiModalInputError(
                f"image_embeds must have shape {shape} for these grids, got {tuple(embeds.shape)}"
            )
        return [{"image_embeds": e, "image_grid_thw": grids[i : i + 1]} for i, e in enumerate(embeds.split(lengths))]

    # ---- weights ----------------------------------------------------------------------------
    def route_weight(self, name: str) -> tuple[str, str] | None:
        lm = language_model_name(name)
        if lm is not None:
            return "lm", lm
        if name.startswith(("model.visual.", "visual.")):
            return "own", name.removeprefix("model.")
        return "lm", name  # the older layout: the language model's weights at the top (model.layers...)


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    v2_5 = True
