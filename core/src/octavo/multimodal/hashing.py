"""Content hashes of images: the prefix cache's identity of their placeholder tokens."""

from __future__ import annotations

import hashlib


def image_hash(image) -> str:
    """sha256 of a PIL image's mode, size and pixels: equal for the same picture however it
    arrived (file, data URL, re-encoded losslessly), different for any changed pixel."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
