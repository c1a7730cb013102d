"""A prompt's images as the model takes them: the checkpoint's image processor
(transformers' AutoImageProcessor: resize, normalize, patches) and placeholder expansion.

Each image's placeholder token in the tokenized prompt (LLaVA's `<image>`, Qwen2-VL's
`<|image_pad|>`) is repeated to the image's number of tokens, as transformers' processors
expand it in the text; doing it on token ids needs no processor class beyond the image
processor (Qwen2-VL's full processor wants torchvision for its video half). The model class
says how the image processor's outputs read: `split_images`, `image_num_tokens`,
`image_token_id`, `image_placeholder` (the text of one image in a chat prompt).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from octavo.multimodal.hashing import embeds_hash, image_hash, video_hash
from octavo.multimodal.inputs import (
    MultiModalInputError,
    MultiModalInputs,
    MultiModalItem,
    images_of,
    parse_limits,
    videos_of,
)


def is_multimodal(hf_config) -> bool:
    """Whether the model takes images (its class defines `split_images`)."""
    from octavo.models import get_model_class

    return hasattr(get_model_class(hf_config), "split_images")


def multimodal_processor(model_config, tokenizer) -> MultiModalProcessor | None:
    """The processor of a vision-language model's prompts (None for a text model), from the
    engine's ModelConfig: the engine builds one, and so does an API server whose engine runs
    in other processes (images are processed where the request arrives)."""
    hf_config = getattr(model_config, "hf_config", None)  # None: an engine without one (tests' fakes) is text only
    if hf_config is None or not is_multimodal(hf_config):
        return None
    return MultiModalProcessor(
        model_config.weights_path, model_config.hf_config, tokenizer, model_config.limit_mm_per_prompt
    )


class MultiModalProcessor:
    def __init__(self, directory: str, hf_config, tokenizer, limits: dict[str, int] | None = None) -> None:
        from transformers import AutoImageProcessor

        from octavo.models import get_model_class

        self.directory = directory
        self.hf_config = hf_config
        self.tokenizer = tokenizer
        self.model_cls = get_model_class(hf_config)
        self.limits = parse_limits(limits)
        self.image_processor = AutoImageProcessor.from_pretrained(directory)
        self.image_token_id = self.model_cls.image_token_id(hf_config)
        self.placeholder = self.model_cls.image_placeholder(tokenizer, hf_config)
        videos = hasattr(self.model_cls, "process_video")
        self.video_token_id = self.model_cls.video_token_id(hf_config) if videos else None
        self.video_placeholder = self.model_cls.video_placeholder(tokenizer, hf_config) if videos else None
        self.video_size = self._video_size()

    def process(self, prompt: str | None, multi_modal_data: Any, add_special_tokens: bool = True) -> MultiModalInputs:
        """A text prompt with one placeholder per image, in order, and its images:
        MultiModalInputError when they do not fit together. A chat template's text has its
        special tokens already: tokenize it with add_special_tokens=False."""
        if not isinstance(prompt, str):
            raise MultiModalInputError("a prompt with multi_modal_data must be text (a 'prompt' string)")
        images = images_of(multi_modal_data, self.limits, self._split_embeds)
        videos = videos_of(multi_modal_data, self.limits)
        if videos and self.video_token_id is None:
            raise MultiModalInputError(f"{self.model_cls.__name__} takes no videos (Qwen2-VL and Qwen2.5-VL do)")
        ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != len(images):
            raise MultiModalInputError(
                f"the prompt has {len(where)} image placeholders ({self.placeholder!r}) for {len(images)} images: "
                "put one placeholder where each image goes"
            )
        where_videos = [i for i, t in enumerate(ids) if t == self.video_token_id] if self.video_token_id else []
        if len(where_videos) != len(videos):
            raise MultiModalInputError(
                f"the prompt has {len(where_videos)} video placeholders ({self.video_placeholder!r}) for {len(videos)} "
                "videos: put one placeholder where each video goes"
            )
        if not images and not videos:
            return MultiModalInputs(ids, [], prompt)
        # (placeholder index, token id, the encoder's inputs, tokens, content hash), in prompt order
        found = [(at, self.image_token_id, *image) for at, image in zip(where, self._images(images))]
        for at, (frames, fps) in zip(where_videos, videos):
            data = self.model_cls.process_video(self.image_processor, frames, fps, self.hf_config, self.video_size)
            found.append(
                (
                    at,
                    self.video_token_id,
                    data,
                    self.model_cls.image_num_tokens(data, self.hf_config),
                    video_hash(frames, fps),
                )
            )
        expanded: list[int] = []
        items = []
        last = 0
        for at, token, data, length, identity in sorted(found, key=lambda f: f[0]):
            expanded += ids[last:at]
            items.append(MultiModalItem(len(expanded), length, identity, data))
            expanded += [token] * length
            last = at + 1
        expanded += ids[last:]
        return MultiModalInputs(expanded, items, prompt)

    def _images(self, images: list) -> list[tuple[dict, int, str]]:
        """(the encoder's inputs, tokens, content hash) of each image: pictures through the
        image processor, embeddings as given."""
        pictures = [im for im in images if not isinstance(im, dict)]  # the others are embeddings, processed
        if pictures:
            outputs = self.image_processor(images=pictures, return_tensors="pt")
            processed = iter(self.model_cls.split_images(outputs, len(pictures), self.hf_config))
        out = []
        for image in images:
            if isinstance(image, dict):
                out.append((image, image["image_embeds"].shape[0], embeds_hash(image)))
            else:
                data = next(processed)
                out.append((data, self.model_cls.image_num_tokens(data, self.hf_config), image_hash(image)))
        return out

    def _split_embeds(self, value) -> list[dict]:
        """Image embeddings given in place of images, one dict per image (the model class'
        `split_image_embeds`): what the encoder would output, put on the placeholders as is."""
        return self.model_cls.split_image_embeds(value, self.hf_config)

    def chat_prompt(self, conversation: list[dict], chat_template: str | None = None) -> tuple[str, list]:
        """A chat's prompt text and its images (PIL, in order), from OpenAI's content parts:
        text, {"type": "image_url", "image_url": {"url": ...}}, {"type": "image_pil",
        "image_pil": image}. A template that loops over a message's parts (transformers'
        processors', Qwen's) gets them as {"type": "text"} and {"type": "image"} parts and
        writes each image's placeholder itself; any other gets the text, each image part as
        the model's placeholder, one part per line. The template: `chat_template`, else the
        tokenizer's, else the checkpoint's processor's (chat_template.json)."""
        from octavo.multimodal.media import image_from_part

        template = chat_template or getattr(self.tokenizer, "chat_template", None) or self.processor_template()
        parts = template is not None and renders_parts(template)
        images: list = []
        messages = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                out: list = []
                for part in content:
                    if part.get("type") == "text":
                        out.append(part if parts else part.get("text", ""))
                        continue
                    images.append(image_from_part(part, len(images)))
                    out.append({"type": "image"} if parts else self.placeholder)
                message = {**message, "content": out if parts else "\n".join(out)}
            messages.append(message)
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, chat_template=template
        )
        return text, images

    def _video_size(self) -> dict | None:
        """The checkpoint's pixel bounds of a video frame (its video processor's config), where
        it has them: its frames are resized within those rather than the images' bounds."""
        path = os.path.join(self.directory, "video_preprocessor_config.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            config = json.load(f)
        size = dict(config.get("size") or {})
        if config.get("min_pixels"):
            size["shortest_edge"] = config["min_pixels"]
        if config.get("max_pixels"):
            size["longest_edge"] = config["max_pixels"]
        return size if {"shortest_edge", "longest_edge"} <= set(size) else None

    def processor_template(self) -> str | None:
        """The chat template of the checkpoint's processor, where it keeps one apart from the
        tokenizer's (older processors: chat_template.json)."""
        path = os.path.join(self.directory, "chat_template.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get("chat_template")


def renders_parts(template: str) -> bool:
    """Whether a chat template loops over a message's content parts (`for part in
    message['content']`, `message.content | selectattr(...)`) rather than printing it."""
    return re.search(r"in\s+\w+(\[['\"]content['\"]\]|\.content)", template) is not None
