"""Turning command-line values into media.v1 requests.

Limits (counts, sizes, durations) are left to job_service, the one place that validates them, so
the CLI never disagrees with the server; only what the CLI itself must decide happens here.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from PIL import Image, UnidentifiedImageError

from media.v1 import job_pb2, job_service_pb2


class InputError(ValueError):
    """A command-line value the CLI cannot turn into a request (shown without a traceback)."""


def _choices(enum: EnumTypeWrapper, prefix: str) -> dict[str, int]:
    """CLI spellings of a proto enum: IMAGE_STYLE_DIGITAL_ART -> "digital_art" (UNSPECIFIED left
    out, since leaving the flag off means that)."""
    return {
        name.removeprefix(prefix).lower(): int(number)
        for name, number in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


IMAGE_FORMATS = _choices(job_pb2.ImageFormat, "IMAGE_FORMAT_")
IMAGE_STYLES = _choices(job_pb2.ImageStyle, "IMAGE_STYLE_")
IMAGE_QUALITIES = _choices(job_pb2.ImageQuality, "IMAGE_QUALITY_")
PERSON_GENERATIONS = _choices(job_pb2.PersonGeneration, "PERSON_GENERATION_")
ASPECT_RATIOS = {
    name.replace("_", ":"): number
    for name, number in _choices(job_pb2.AspectRatio, "ASPECT_RATIO_").items()
}
KINDS = _choices(job_pb2.MediaKind, "MEDIA_KIND_")
STATUSES = _choices(job_pb2.JobStatus, "JOB_STATUS_")


def normalize_choice(text: str) -> str:
    """Lets `digital-art`, `DIGITAL_ART` and `digital_art` name the same choice."""
    return text.strip().lower().replace("-", "_")


def new_request_id() -> str:
    return str(uuid.uuid4())


def read_input_image(path: str) -> job_pb2.InputImage:
    """The file's bytes with the MIME type Pillow finds in them (not the file name's suffix)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"--input-image: cannot read {path}: {exc.strerror or exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
    except (UnidentifiedImageError, OSError):
        raise InputError(f"--input-image: {path} is not an image Pillow can read") from None
    mime_type = Image.MIME.get(image_format or "")
    if not mime_type:
        raise InputError(f"--input-image: {path}: no MIME type known for format {image_format}")
    # The server decides which types it accepts, and names the field if it refuses this one.
    return job_pb2.InputImage(data=data, mime_type=mime_type)


def image_request(
    *,
    prompt: str,
    request_id: str,
    size: str = "",
    image_format: str | None = None,
    count: int = 0,
    style: str | None = None,
    quality: str | None = None,
    model: str = "",
    input_image: job_pb2.InputImage | None = None,
) -> job_service_pb2.CreateJobRequest:
    params = job_pb2.ImageParams(
        prompt=prompt,
        number_of_images=count,
        size=size,
        format=_lookup(IMAGE_FORMATS, image_format, "--format"),
        style=_lookup(IMAGE_STYLES, style, "--style"),
        quality=_lookup(IMAGE_QUALITIES, quality, "--quality"),
        model=model,
    )
    if input_image is not None:
        params.input_image.CopyFrom(input_image)
    return job_service_pb2.CreateJobRequest(request_id=request_id, image=params)


def video_request(
    *,
    prompt: str,
    request_id: str,
    negative_prompt: str = "",
    aspect_ratio: str | None = None,
    duration_seconds: int = 0,
    count: int = 0,
    person_generation: str | None = None,
    model: str = "",
    input_image: job_pb2.InputImage | None = None,
) -> job_service_pb2.CreateJobRequest:
    params = job_pb2.VideoParams(
        prompt=prompt,
        negative_prompt=negative_prompt,
        aspect_ratio=_lookup(ASPECT_RATIOS, aspect_ratio, "--aspect-ratio"),
        duration_seconds=duration_seconds,
        number_of_videos=count,
        person_generation=_lookup(PERSON_GENERATIONS, person_generation, "--person-generation"),
        model=model,
    )
    if input_image is not None:
        params.input_image.CopyFrom(input_image)
    return job_service_pb2.CreateJobRequest(request_id=request_id, video=params)


def list_request(
    *,
    page_size: int = 0,
    page_token: str = "",
    kind: str | None = None,
    status: str | None = None,
) -> job_service_pb2.ListJobsRequest:
    return job_service_pb2.ListJobsRequest(
        page_size=page_size,
        page_token=page_token,
        kind=_lookup(KINDS, kind, "--kind"),
        status=_lookup(STATUSES, status, "--status"),
    )


def _lookup(choices: Mapping[str, int], value: str | None, flag: str) -> int:
    """None (flag left off) maps to UNSPECIFIED, i.e. the server's default."""
    if value is None:
        return 0
    key = value if value in choices else normalize_choice(value)
    if key not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return choices[key]
