"""Tiny random-weight vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL) saved as Hugging
Face directories with their image processor and a tokenizer that knows their image tokens,
built offline (no hub), and transformers' greedy output on them: the reference of
tests/test_multimodal.py.

The vision weights are drawn wide (as tiny_models does for text models), so that a changed
image changes the logits: a test that ignored the image would see different tokens.
"""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import torch
from tiny_models import smollm2_tokenizer

VLM_ARCHS = ("llava", "llava_siglip", "llava_next", "qwen2_vl", "qwen2_5_vl")
QWEN_IMAGE_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
#: the text of one image in a prompt
PLACEHOLDER = {"llava": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}
PLACEHOLDER["llava_siglip"] = PLACEHOLDER["llava_next"] = PLACEHOLDER["llava"]
#: LLaVA-NeXT's canvases (height, width): images cut into 1x2, 2x1 or 2x2 tiles of 28x28
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
PLACEHOLDER["qwen2_5_vl"] = PLACEHOLDER["qwen2_vl"]


def video(frames: int, width: int, height: int, seed: int):
    """A random RGB video, [frames, height, width, 3] uint8 (the form vLLM takes)."""
    return (np.random.default_rng(seed).random((frames, height, width, 3)) * 255).astype("uint8")


def image(width: int, height: int, seed: int):
    """A random RGB PIL image."""
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8")
    return Image.fromarray(pixels)


def _text_config(vocab: int, **rope) -> dict:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=1024,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        **rope,
    )


@functools.cache
def make_tiny_vlm(arch: str, root: str) -> str:
    """Save a tiny `arch` model under root/arch (once per process) and return its path."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    path = os.path.join(root, arch)
    # a copy: smollm2_tokenizer() is cached and shared, and the image tokens added below would
    # otherwise grow the vocabulary every later test draws random prompt ids from
    tok = copy.deepcopy(smollm2_tokenizer())
    torch.manual_seed(VLM_ARCHS.index(arch))
    if arch.startswith("llava"):  # 28x28 images, 7x7 patches -> 16 tokens per image
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
        tower.update(image_size=28, patch_size=7)
        if arch in ("llava", "llava_next"):  # CLIP: the class token dropped, the second-to-last layer's features
            vision, layer, strategy = CLIPVisionConfig(**tower), -2, "default"
            processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
        else:  # SigLIP (LLaVA-Interleave): no class token, the last layer's features, all of them
            vision, layer, strategy = SiglipVisionConfig(**tower), -1, "full"
            processor = SiglipImageProcessor(size={"height": 28, "width": 28})
        common = dict(
            vision_config=vision,
            text_config=LlamaConfig(**_text_config(len(tok))),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            vision_feature_layer=layer,
            vision_feature_select_strategy=strategy,
            projector_hidden_act="gelu",
        )
        if arch == "llava_next":  # anyres: the whole image and its tiles on the best canvas
            model = LlavaNextForConditionalGeneration(LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS))
            processor = LlavaNextImageProcessor(
                size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=PINPOINTS
            )
        else:
            model = LlavaForConditionalGeneration(LlavaConfig(**common))
    else:  # 14x14 patches at the image's own resolution, 2x2 merged, 4 to 36 tokens per image
        tok.add_special_tokens({"additional_special_tokens": QWEN_IMAGE_TOKENS})
        start, pad, end, video = tok.convert_tokens_to_ids(QWEN_IMAGE_TOKENS)
        text = _text_config(
            len(tok), rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
        )
        ids = dict(image_token_id=pad, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)
        if arch == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2)
            model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
        else:  # windows of 2x2 merged tokens, full attention in the middle block
            vision = dict(
                depth=3,
                hidden_size=32,
                intermediate_size=48,
                out_hidden_size=64,
                num_heads=4,
                window_size=56,
                fullatt_block_indexes=[1],
                hidden_act="silu",
            )
            model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
        processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 36)
    with torch.no_grad():  # wide weights everywhere, norms spread around 1
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or "newline" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
            elif "visual" in name or "vision" in name or "projector" in name:
                p.normal_(0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.1)  # unit-scale activations
    model.save_pretrained(path)
    processor.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@functools.lru_cache(maxsize=4)
def _load_hf(path: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def expand(ids: list[int], image_token: int, lengths: list[int]) -> list[int]:
    """Token ids with the i-th image token repeated lengths[i] times (what transformers' own
    processors do to the text)."""
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_token:
            out += [t] * lengths[k]
            k += 1
        else:
            out.append(t)
    return out


@torch.inference_mode()
def hf_generate(path: str, prompt: str, images: list, max_new_tokens: int, videos: list | None = None) -> list[int]:
    """transformers' greedy tokens for a text prompt with its images, never stopping at EOS.
    Qwen2-VL's `videos`: the encoder's inputs of each video (octavo's frame processing: see
    test_video_frames_are_patched_as_qwens_video_processor_lays_them_out for its check)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    model = _load_hf(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.encode(prompt)
    kw = {}
    image_token = model.config.image_token_id
    if images and model.config.model_type == "llava_next":  # its own processor counts the tokens
        from transformers import LlavaNextProcessor

        processor = LlavaNextProcessor(
            image_processor=AutoImageProcessor.from_pretrained(path),
            tokenizer=tok,
            patch_size=model.config.vision_config.patch_size,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            num_additional_image_tokens=1,
            image_token="<image>",
        )
        x = processor(text=[prompt], images=images, return_tensors="pt")
        ids = x["input_ids"][0].tolist()
        kw = dict(pixel_values=x["pixel_values"], image_sizes=x["image_sizes"])
    elif images:
        x = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")
        if "image_grid_thw" in x:  # Qwen2-VL: a token per 2x2 patches of the image's grid
            kw = dict(pixel_values=x["pixel_values"], image_grid_thw=x["image_grid_thw"])
            lengths = [int(g.prod()) // 4 for g in x["image_grid_thw"]]
        else:  # LLaVA: a token per patch, the class token dropped
            vc = model.config.vision_config
            kw = dict(pixel_values=x["pixel_values"])
            lengths = [(vc.image_size // vc.patch_size) ** 2] * len(images)
        ids = expand(ids, image_token, lengths)
    if videos:
        video_token = model.config.video_token_id
        ids = expand(ids, video_token, [int(v["image_grid_thw"].prod()) // 4 for v in videos])
        kw["pixel_values_videos"] = torch.cat([v["pixel_values"] for v in videos])
        kw["video_grid_thw"] = torch.cat([v["image_grid_thw"] for v in videos])
        if model.config.model_type == "qwen2_5_vl":
            kw["second_per_grid_ts"] = torch.tensor([v["second_per_grid_t"] for v in videos])
    inp = torch.tensor([ids])
    if "image_grid_thw" in kw or model.config.model_type.startswith("qwen"):
        kw["mm_token_type_ids"] = (inp == image_token).int()
        if videos:
            kw["mm_token_type_ids"][inp == model.config.video_token_id] = 2
    out = model.generate(
        input_ids=inp,
        attention_mask=torch.ones_like(inp),
        **kw,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


@torch.inference_mode()
def hf_image_embeds(path: str, images: list):
    """transformers' vision encoder output for `images`, in the form vLLM takes as image
    embeddings: LLaVA's projected features [num_images, feature_size, hidden]; Qwen2-VL's
    {"image_embeds": [total_tokens, hidden], "image_grid_thw": [num_images, 3]}."""
    from transformers import AutoImageProcessor

    model = _load_hf(path)
    x = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")
    if "image_grid_thw" in x:
        out = model.model.get_image_features(pixel_values=x["pixel_values"], image_grid_thw=x["image_grid_thw"])
        return {"image_embeds": torch.cat(out.pooler_output), "image_grid_thw": x["image_grid_thw"]}
    c = model.config
    out = model.model.get_image_features(
        pixel_values=x["pixel_values"],
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select_strategy=c.vision_feature_select_strategy,
    )
    return torch.stack(list(out.pooler_output))


@torch.inference_mode()
def hf_generate_from_embeds(path: str, prompt: str, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
    """transformers' greedy tokens for a LLaVA prompt whose image placeholders' input
    embeddings are `embeds` [num_images, feature_size, hidden] (generate's inputs_embeds)."""
    from transformers import AutoTokenizer

    model = _load_hf(path)
    token = model.config.image_token_id
    ids = torch.tensor(
        [expand(AutoTokenizer.from_pretrained(path).encode(prompt), token, [embeds.shape[1]] * len(embeds))]
    )
    x = model.get_input_embeddings()(ids)
    x[ids == token] = embeds.reshape(-1, embeds.shape[-1]).to(x.dtype)
    out = model.generate(
        inputs_embeds=x,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, -max_new_tokens:].tolist()
