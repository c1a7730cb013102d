"""Chat content parts with images, for vision-language models: decoded here, in the API
process, into the plain data the engine takes (octavo.multimodal); any image that cannot be
used is a 400 that names it."""

from __future__ import annotations

from typing import Any

from octavo.entrypoints.openai.errors import BadRequestError
from octavo.entrypoints.openai.protocol import ChatContentPart, ChatMessage
from octavo.multimodal import MultiModalInputError, MultiModalInputs
from octavo.multimodal.media import UrlFetch, image_from_part


def take_images(
    messages: list[ChatMessage], processor: Any, fetch: UrlFetch | None, parts: bool = False
) -> tuple[list[ChatMessage], list]:
    """The messages with each image part replaced by the model's placeholder text (or, for a
    template that loops over content parts and writes images itself, `parts`, by an
    {"type": "image"} part), and the images (PIL, in order). A text-only model refuses image parts."""
    others = [p for m in messages if isinstance(m.content, list) for p in m.content if p.type != "text"]
    if not others:
        return messages, []
    if processor is None:
        raise BadRequestError(
            f"message content part of type {others[0].type!r} is not supported: this model takes text only",
            param="messages",
        )
    limit = processor.limits["image"]
    if len(others) > limit:
        raise BadRequestError(
            f"the messages have {len(others)} images, more than the {limit} this server takes per prompt "
            "(--limit-mm-per-prompt)",
            param="messages",
        )
    images: list = []
    out = []
    for m in messages:
        if isinstance(m.content, list):
            content = []
            for p in m.content:
                if p.type == "text":
                    content.append(p)
                    continue
                try:
                    images.append(image_from_part(p.model_dump(exclude_none=True), len(images), fetch))
                except MultiModalInputError as e:
                    raise BadRequestError(str(e), param="messages") from None
                content.append(
                    ChatContentPart(type="image") if parts else ChatContentPart(type="text", text=processor.placeholder)
                )
            m = m.model_copy(update={"content": content})
        out.append(m)
    return out, images


def multimodal_prompt(processor: Any, text: str, images: list, add_special_tokens: bool) -> MultiModalInputs:
    """The rendered chat text with its images, as the engine takes them (400 where they do not fit)."""
    try:
        return processor.process(text, {"image": images}, add_special_tokens=add_special_tokens)
    except MultiModalInputError as e:
        raise BadRequestError(str(e), param="messages") from None
