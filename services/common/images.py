"""Image vocabulary shared by validation, the generators and the CLI: the sizes a job may ask for,
"WIDTHxHEIGHT" parsing and recognising an image's type from its first bytes."""

from __future__ import annotations

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
