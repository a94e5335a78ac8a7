"""What a generated file really is, read from its bytes: dimensions, duration, size, sha256.

Every check streams from disk so that a large video is never held in memory. The content type a
generator claims is checked against what the bytes decode as; a mismatch is a generator bug and
must not reach a client as a file that will not open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, UnidentifiedImageError

_CHUNK = 1024 * 1024

# The content types accepted are those services.common.keys stores (keys.EXTENSIONS).
# Content type -> the Pillow format name the bytes must decode as.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
# Content type -> a name that must appear in the container's (comma-separated) format names.
VIDEO_TYPES = {"video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov"}


class ProbeError(ValueError):
    """The file is not what its content type says, or does not decode at all."""


@dataclass(frozen=True)
class MediaInfo:
    content_type: str
    byte_size: int
    sha256: str  # hex
    width: int
    height: int
    duration_seconds: float  # 0 for images


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex and byte size, reading 1 MiB at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def image_dimensions(path: Path, content_type: str) -> tuple[int, int]:
    expected = IMAGE_TYPES[content_type]
    try:
        with Image.open(path) as image:
            actual, size = image.format, image.size
            # verify() checks the whole stream (PNG CRCs, truncation) without decoding pixels.
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ProbeError(f"{path.name} is not a readable {content_type} image: {exc}") from None
    if actual != expected:
        raise ProbeError(f"{path.name} is {actual}, not {content_type}")
    return size


def video_dimensions(path: Path, content_type: str) -> tuple[int, int, float]:
    """Width, height and duration in seconds of the first video stream."""
    expected = VIDEO_TYPES[content_type]
    try:
        with av.open(str(path)) as container:
            format_name = container.format.name
            streams = container.streams.video
            if not streams:
                raise ProbeError(f"{path.name} has no video stream")
            stream = streams[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ProbeError(f"{path.name} is not a readable {content_type} video: {exc}") from None
    if expected not in format_name.split(","):
        raise ProbeError(f"{path.name} is {format_name}, not {content_type}")
    if width <= 0 or height <= 0:
        raise ProbeError(f"{path.name} has no frame size")
    return width, height, duration


def probe_file(path: Path, content_type: str) -> MediaInfo:
    """Reads everything an Output records. Blocking: call it through asyncio.to_thread."""
    if content_type in IMAGE_TYPES:
        width, height = image_dimensions(path, content_type)
        duration = 0.0
    elif content_type in VIDEO_TYPES:
        width, height, duration = video_dimensions(path, content_type)
    else:
        raise ProbeError(f"unsupported content type {content_type!r}")
    sha256, byte_size = file_digest(path)
    if byte_size == 0:
        raise ProbeError(f"{path.name} is empty")
    return MediaInfo(
        content_type=content_type,
        byte_size=byte_size,
        sha256=sha256,
        width=width,
        height=height,
        duration_seconds=round(duration, 3),
    )
