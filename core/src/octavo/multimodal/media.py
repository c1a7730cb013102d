"""Images from chat content parts: `data:` URLs (base64), PIL images, and http(s) URLs only
where the operator allowed fetching (`--allow-image-urls`): a server must not fetch an
arbitrary address because a client named it."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from octavo.multimodal.inputs import MultiModalInputError

#: the most bytes of one encoded image (a data URL's payload or a fetched body)
MAX_IMAGE_BYTES = 20 * 2**20
#: the most pixels of one decoded image: a small PNG may decode to gigabytes
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class UrlFetch:
    """How http(s) image URLs are fetched where the operator allows it."""

    timeout_s: float = 10.0
    max_bytes: int = MAX_IMAGE_BYTES


def image_from_part(part: dict, index: int, fetch: UrlFetch | None = None):
    """The PIL image of a chat content part: {"type": "image_url", "image_url": {"url": ...}}
    (or the URL as a plain string) or {"type": "image_pil", "image_pil": image}."""
    kind = part.get("type")
    if kind == "image_pil":
        return part["image_pil"]
    if kind != "image_url":
        raise MultiModalInputError(
            f"content part {kind!r} is not supported; supported: text, image_url, image_pil (image {index})"
        )
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise MultiModalInputError(f"image {index}: image_url needs a url")
    return load_image_url(url, index, fetch)


def load_image_url(url: str, index: int, fetch: UrlFetch | None = None):
    if url.startswith("data:"):
        return decode_image(_data_url_bytes(url, index), index)
    if url.startswith(("http://", "https://")):
        if fetch is None:
            raise MultiModalInputError(
                f"image {index}: this server does not fetch image URLs (start it with --allow-image-urls to let it); "
                "send the image inline as a data: URL (data:image/png;base64,...)"
            )
        return decode_image(_fetch(url, index, fetch), index)
    raise MultiModalInputError(f"image {index}: the url must be a data: URL or http(s), got {url[:32]!r}")


def _data_url_bytes(url: str, index: int) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise MultiModalInputError(f"image {index}: a data URL must be data:<type>;base64,<payload>")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise MultiModalInputError(f"image {index} is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MultiModalInputError(f"image {index}: the data URL's payload is not valid base64") from None


def _fetch(url: str, index: int, fetch: UrlFetch) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=fetch.timeout_s, follow_redirects=True) as r:
            r.raise_for_status()
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > fetch.max_bytes:
                    raise MultiModalInputError(f"image {index} at {url} is larger than {fetch.max_bytes} bytes")
            return bytes(body)
    except httpx.HTTPError as e:
        raise MultiModalInputError(f"image {index}: fetching {url} failed: {e}") from None


def decode_image(data: bytes, index: int):
    """An RGB PIL image from encoded bytes; MultiModalInputError for bytes that are not an
    image or decode to more than MAX_IMAGE_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise MultiModalInputError(f"image {index} is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise MultiModalInputError(
                f"image {index} is {image.width}x{image.height} pixels, more than the {MAX_IMAGE_PIXELS} allowed"
            )
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, MultiModalInputError):
            raise
        raise MultiModalInputError(f"image {index} could not be decoded: {e}") from None
    return image.convert("RGB")
