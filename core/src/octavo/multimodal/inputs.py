"""What a prompt's images become before they enter the engine: plain, picklable data.

Everything here is decided in the process that takes the request (the API server or the
`LLM` caller): images are decoded, checked, hashed and run through the checkpoint's
processor there, so what crosses into the engine is tensors, integers and strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the modalities a prompt's `multi_modal_data` may hold
MODALITIES = ("image", "video")

#: items of each modality per prompt when the engine is given no limit (vLLM's `--limit-mm-per-prompt`)
DEFAULT_LIMIT = 16


class MultiModalInputError(ValueError):
    """A prompt's images cannot be used (undecodable, too large, too many): the message says
    which image and why, and the server answers 400 with it."""


@dataclass(frozen=True)
class MultiModalItem:
    """One image of a prompt: its placeholder tokens are [offset, offset + length) of the
    prompt, `identity` is its content hash (the prefix cache's key for those tokens), and
    `data` the processor's tensors of this image alone, which the model's encoder takes."""

    offset: int
    length: int
    identity: str
    data: dict[str, Any]

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class MultiModalInputs:
    """A processed multimodal prompt, what `LLMEngine.add_request` takes: token ids with each
    image's placeholder expanded to its tokens, and its images in prompt order."""

    prompt_token_ids: list[int]
    items: list[MultiModalItem]
    prompt: str | None = None


def parse_limits(limits: dict[str, int] | None) -> dict[str, int]:
    """`--limit-mm-per-prompt`'s mapping (modality -> most items per prompt), checked."""
    out = {m: DEFAULT_LIMIT for m in MODALITIES}
    for name, value in (limits or {}).items():
        if name not in MODALITIES:
            raise ValueError(
                f"limit_mm_per_prompt names modality {name!r}, which Octavo does not take; supported: "
                f"{', '.join(MODALITIES)}"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"limit_mm_per_prompt[{name!r}] must be a non-negative integer, got {value!r}")
        out[name] = value
    return out


def images_of(multi_modal_data: Any, limits: dict[str, int], split_embeds: Callable[[Any], list[dict]]) -> list:
    """The images of a prompt's `multi_modal_data` ({"image": image or list}), in order: PIL
    images converted to RGB, and image embeddings (a tensor, or Qwen2-VL's dict of
    `image_embeds` and `image_grid_thw`) as `split_embeds` cuts them into one dict per image;
    MultiModalInputError for anything else or more than the limit allows."""
    import torch
    from PIL import Image

    if not isinstance(multi_modal_data, dict):
        raise MultiModalInputError(
            f"multi_modal_data must be a dict such as {{'image': image}}, got {type(multi_modal_data).__name__}"
        )
    unknown = sorted(set(multi_modal_data) - set(MODALITIES))
    if unknown:
        raise MultiModalInputError(
            f"multi_modal_data has {', '.join(map(repr, unknown))}; supported: {', '.join(MODALITIES)}"
        )
    given = multi_modal_data.get("image", [])
    if not isinstance(given, (list, tuple)):
        given = [given]
    out: list = []
    for value in given:
        if isinstance(value, (torch.Tensor, dict)):  # embeddings: the vision encoder's output, given
            out += split_embeds(value)
        elif isinstance(value, Image.Image):
            out.append(value if value.mode == "RGB" else value.convert("RGB"))
        else:
            raise MultiModalInputError(
                f"image {len(out)} is a {type(value).__name__}, not a PIL image or a tensor of image embeddings"
            )
    if len(out) > limits["image"]:
        raise MultiModalInputError(
            f"the prompt has {len(out)} images, more than the {limits['image']} this server takes per prompt "
            "(--limit-mm-per-prompt)"
        )
    return out


def embeds_tensor(value: Any, what: str, shape: str, hidden: int) -> Any:
    """`value` checked as a floating-point tensor of embeddings whose last dimension is the
    language model's `hidden` size (`shape` names the expected shape in the error)."""
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape[-1:] != (hidden,):
        got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise MultiModalInputError(f"{what} must be a floating-point tensor of shape {shape}, got {got}")
    return value.detach().cpu()


#: a video's frames per second where its frames come without their metadata (Qwen's processors' default)
DEFAULT_FPS = 2.0


def videos_of(multi_modal_data: dict, limits: dict[str, int]) -> list[tuple[list, float]]:
    """The videos of a prompt's `multi_modal_data` ({"video": video or list}), in order, each as
    (its frames as RGB PIL images, frames per second). A video is a numpy array [T, H, W, 3]
    of uint8, a list of PIL images, or vLLM's (frames, metadata) pair whose metadata gives
    "fps"; MultiModalInputError for anything else or more than the limit allows."""
    given = multi_modal_data.get("video", [])
    if isinstance(given, list) and given and not isinstance(given[0], (list, tuple)) and _is_frame(given[0]):
        given = [given]  # one video given as its list of frames
    elif not isinstance(given, list):
        given = [given]
    if len(given) > limits["video"]:
        raise MultiModalInputError(
            f"the prompt has {len(given)} videos, more than the {limits['video']} this server takes per prompt "
            "(--limit-mm-per-prompt)"
        )
    return [_video(v, i) for i, v in enumerate(given)]


def _is_frame(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _video(value: Any, index: int) -> tuple[list, float]:
    import numpy as np
    from PIL import Image

    fps = DEFAULT_FPS
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[1], dict):
            raise MultiModalInputError(f"video {index}: a tuple must be (frames, metadata dict)")
        value, fps = value[0], float(value[1].get("fps") or DEFAULT_FPS)
    if isinstance(value, np.ndarray):
        if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8 or not len(value):
            raise MultiModalInputError(
                f"video {index} must be a uint8 array of shape [frames, height, width, 3], got "
                f"{value.shape} {value.dtype}"
            )
        frames = [Image.fromarray(f) for f in value]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(f, Image.Image) for f in value):
        frames = [f if f.mode == "RGB" else f.convert("RGB") for f in value]
    else:
        raise MultiModalInputError(
            f"video {index} is a {type(value).__name__}: give a uint8 array [frames, height, width, 3] or a list of "
            "PIL images"
        )
    if len({f.size for f in frames}) != 1:
        raise MultiModalInputError(f"video {index}: its frames differ in size ({sorted({f.size for f in frames})})")
    return frames, fps
