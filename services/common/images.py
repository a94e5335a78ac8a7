"""Image vocabulary shared by validation, the generators and the CLI: the sizes a job may ask for,
"WIDTHxHEIGHT" parsing and recognising an image's type from its first bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# The sizes the image models offer (and so the only ones a job may name).
IMAGE_SIZES: tuple[str, ...] = (
    "256x256",
    "512x512",
    "1024x1024",
    "832x1248",
    "1248x832",
    "864x1184",
    "1184x864",
    "896x1152",
    "1152x896",
    "768x1344",
    "1344x768",
    "1536x672",
)
DEFAULT_IMAGE_SIZE = "1024x1024"
# Content types of the images we accept and produce.
IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
_PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

# Decoded pixels an input image may have: 4096 x 4096. The models downscale anything larger (their
# own inputs are a few megapixels), and decoded as RGBA this is 64 MiB, so a worker holding a few
# stays affordable; a small file that decodes to far more (a decompression bomb) is refused from
# its header, before any pixel is decoded.
MAX_INPUT_PIXELS = 4096 * 4096


def parse_size(size: str) -> tuple[int, int]:
    """ "WIDTHxHEIGHT" -> (width, height), both positive; empty means DEFAULT_IMAGE_SIZE.
    Raises ValueError for anything else."""
    text = size.strip().lower() or DEFAULT_IMAGE_SIZE
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(f"size must be WIDTHxHEIGHT, got {size!r}")
    dims = int(width), int(height)
    if not all(dims):
        raise ValueError(f"size {size!r} is empty")
    return dims


def sniff_image_type(data: bytes) -> str:
    """The content type the bytes start like (PNG, JPEG or WEBP); "" when none. A cheap check of
    the magic bytes only: decoding is the caller's business."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


@dataclass(frozen=True)
class ImageHeader:
    content_type: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def too_large(self) -> str | None:
        """Why the image must not be decoded (None: it may be)."""
        if self.pixels <= MAX_INPUT_PIXELS:
            return None
        return (
            f"decodes to {self.width}x{self.height} = {self.pixels} pixels; at most "
            f"{MAX_INPUT_PIXELS} (4096x4096) are accepted"
        )


def read_header(data: bytes) -> ImageHeader | None:
    """Type and dimensions of a PNG, JPEG or WEBP image from its header alone (Pillow opens lazily:
    no pixel is decoded here); None for anything else."""
    try:
        with Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS)) as image:
            content_type = _PIL_FORMATS.get(image.format or "")
            width, height = image.size
    except Exception:  # Pillow raises many kinds for bytes that are not an image
        return None
    if content_type is None:
        return None
    return ImageHeader(content_type, width, height)
