"""Content hashes of images: the prefix cache's identity of their placeholder tokens."""

from __future__ import annotations

import hashlib

import torch


def image_hash(image) -> str:
    """sha256 of a PIL image's mode, size and pixels: equal for the same picture however it
    arrived (file, data URL, re-encoded losslessly), different for any changed pixel."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def embeds_hash(data: dict) -> str:
    """sha256 of an image given as embeddings: each tensor's name, dtype, shape and bytes, so
    the same tensors share their KV and any changed value (or grid) does not."""
    h = hashlib.sha256()
    for name in sorted(data):
        t = data[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def video_hash(frames: list, fps: float) -> str:
    """sha256 of a video: its frames' hashes in order and its frame rate (which moves the
    temporal positions of Qwen2.5-VL's tokens)."""
    h = hashlib.sha256(f"video:{fps}:".encode())
    for frame in frames:
        h.update(image_hash(frame).encode())
    return h.hexdigest()
