"""Checks every field of a client request; returns the normalized request or raises
INVALID_ARGUMENT naming each offending field. Nothing is written before this passes."""

from __future__ import annotations

import functools
import io
import uuid
from collections.abc import Iterable
from typing import Protocol

from PIL import Image

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common import images, keys
from services.common.errors import invalid_argument
from services.common.ids import parse_uuid
from services.common.images import DEFAULT_IMAGE_SIZE, IMAGE_SIZES
from services.job_service.settings import Limits

MIN_VIDEO_SECONDS = 4
DEFAULT_VIDEO_SECONDS = 8  # or Limits.max_video_seconds when that is lower
# A job asks for at most this many outputs, whatever the settings (they may only lower it).
MAX_OUTPUTS = 4
_MAX_DURATION_SECONDS = 24 * 3600.0  # of an output; also rules out NaN and infinity
MAX_REQUEST_ID_CHARS = 128

Violations = list[tuple[str, str]]


class _ProtoEnum(Protocol):
    """A generated protobuf enum (job_pb2.ImageFormat, ...): what _enum reads of it. Hashable,
    for functools.cache."""

    def __hash__(self) -> int: ...
    def keys(self) -> Iterable[str]: ...
    def values(self) -> Iterable[int]: ...


def job_id(value: str, field: str = "job_id") -> uuid.UUID:
    parsed = parse_uuid(value)
    if parsed is None:
        raise invalid_argument([(field, "must be a job ID (a UUID such as CreateJob returned)")])
    return parsed


def create_request(
    request: job_service_pb2.CreateJobRequest, limits: Limits
) -> job_service_pb2.CreateJobRequest:
    """A copy with defaults filled in; the input image's mime type is set from its bytes."""
    out = job_service_pb2.CreateJobRequest()
    out.CopyFrom(request)
    bad: Violations = []
    if out.request_id:
        rid = out.request_id
        if len(rid) > MAX_REQUEST_ID_CHARS or not all(0x21 <= ord(c) <= 0x7E for c in rid):
            bad.append(
                ("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} printable ASCII characters")
            )
    which = out.WhichOneof("params")
    if which == "image":
        _image(out.image, limits, bad)
    elif which == "video":
        _video(out.video, limits, bad)
    else:
        bad.append(("params", "one of image or video is required"))
    if bad:
        raise invalid_argument(bad)
    return out


def _image(p: job_pb2.ImageParams, limits: Limits, bad: Violations) -> None:
    _text(p.prompt, "image.prompt", limits.max_prompt_chars, bad, required=True)
    if p.HasField("input_image"):
        _input_image(p.input_image, "image.input_image", limits, bad)
    if not 0 <= p.number_of_images <= limits.max_images:
        bad.append(("image.number_of_images", f"must be between 1 and {limits.max_images}"))
    p.number_of_images = p.number_of_images or 1
    if p.size and p.size not in IMAGE_SIZES:
        bad.append(("image.size", f"must be one of {', '.join(IMAGE_SIZES)}"))
    p.size = p.size or DEFAULT_IMAGE_SIZE
    _enum(p.format, job_pb2.ImageFormat, "image.format", bad)
    p.format = p.format or job_pb2.IMAGE_FORMAT_PNG
    _enum(p.style, job_pb2.ImageStyle, "image.style", bad)
    _enum(p.quality, job_pb2.ImageQuality, "image.quality", bad)
    p.quality = p.quality or job_pb2.IMAGE_QUALITY_STANDARD
    if p.model and p.model not in limits.image_models:
        bad.append(("image.model", f"must be one of {', '.join(limits.image_models)}"))


def _video(p: job_pb2.VideoParams, limits: Limits, bad: Violations) -> None:
    _text(p.prompt, "video.prompt", limits.max_prompt_chars, bad, required=True)
    _text(p.negative_prompt, "video.negative_prompt", limits.max_prompt_chars, bad)
    if p.HasField("input_image"):
        _input_image(p.input_image, "video.input_image", limits, bad)
    _enum(p.aspect_ratio, job_pb2.AspectRatio, "video.aspect_ratio", bad)
    p.aspect_ratio = p.aspect_ratio or job_pb2.ASPECT_RATIO_16_9
    longest = limits.max_video_seconds
    if p.duration_seconds and not MIN_VIDEO_SECONDS <= p.duration_seconds <= longest:
        bad.append(("video.duration_seconds", f"must be between {MIN_VIDEO_SECONDS} and {longest}"))
    p.duration_seconds = p.duration_seconds or min(DEFAULT_VIDEO_SECONDS, longest)
    if not 0 <= p.number_of_videos <= limits.max_videos:
        bad.append(("video.number_of_videos", f"must be between 1 and {limits.max_videos}"))
    p.number_of_videos = p.number_of_videos or 1
    _enum(p.person_generation, job_pb2.PersonGeneration, "video.person_generation", bad)
    if p.model and p.model not in limits.video_models:
        bad.append(("video.model", f"must be one of {', '.join(limits.video_models)}"))


def _text(value: str, field: str, limit: int, bad: Violations, *, required: bool = False) -> None:
    if required and not value.strip():
        bad.append((field, "must not be empty"))
    elif len(value) > limit:
        bad.append((field, f"must be at most {limit} characters (got {len(value)})"))
    elif "\x00" in value:
        bad.append((field, "must not contain NUL characters"))


@functools.cache
def _enum_values(enum: _ProtoEnum) -> frozenset[int]:
    return frozenset(enum.values())


def _enum(value: int, enum: _ProtoEnum, field: str, bad: Violations) -> None:
    if value not in _enum_values(enum):
        names = ", ".join(n for n in enum.keys() if not n.endswith("_UNSPECIFIED"))
        bad.append((field, f"unknown value {value}; must be one of {names}"))


def _input_image(img: job_pb2.InputImage, field: str, limits: Limits, bad: Violations) -> None:
    if img.bucket or img.key:
        bad.append((f"{field}.key", "is set by the service; send data and mime_type only"))
    if not img.data:
        bad.append((f"{field}.data", "must not be empty"))
        return
    if len(img.data) > limits.max_input_image_bytes:
        bad.append(
            (
                f"{field}.data",
                f"must be at most {limits.max_input_image_bytes} bytes (got {len(img.data)})",
            )
        )
        return
    header = images.read_header(img.data)
    if header is None:
        bad.append((f"{field}.data", "is not a PNG, JPEG or WEBP image"))
        return
    too_large = header.too_large()
    if too_large is not None:
        bad.append((f"{field}.data", too_large))
        return
    if not _decodes(img.data):
        bad.append((f"{field}.data", f"is not a complete {header.content_type} image"))
        return
    if img.mime_type and img.mime_type != header.content_type:
        bad.append(
            (f"{field}.mime_type", f"is {img.mime_type} but the data is {header.content_type}")
        )
    img.mime_type = header.content_type


def _decodes(data: bytes) -> bool:
    """Whether the image's data holds together (its size was checked first, from the header)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # Pillow raises many kinds for a broken image
        return False
    return True


def list_request(request: job_service_pb2.ListJobsRequest, limits: Limits) -> int:
    """The page size to use."""
    bad: Violations = []
    if request.page_size < 0:
        bad.append(("page_size", "must not be negative"))
    _enum(request.kind, job_pb2.MediaKind, "kind", bad)
    _enum(request.status, job_pb2.JobStatus, "status", bad)
    if bad:
        raise invalid_argument(bad)
    # Larger pages are coerced to the maximum, as Google's AIP-158 asks.
    return min(request.page_size or 20, limits.max_page_size)


def _attempt_of(
    request: worker_service_pb2.ReportProgressRequest | worker_service_pb2.CompleteJobRequest,
    bad: Violations,
) -> uuid.UUID | None:
    """Checks what every report of a worker on its attempt carries; the job ID when it is one."""
    parsed = parse_uuid(request.job_id)
    if parsed is None:
        bad.append(("job_id", "must be a job ID"))
    if request.attempt <= 0:
        bad.append(("attempt", "must be the attempt number ClaimJob returned"))
    return parsed


def progress_request(request: worker_service_pb2.ReportProgressRequest) -> uuid.UUID:
    bad: Violations = []
    parsed = _attempt_of(request, bad)
    if not 0 <= request.progress <= 100:
        bad.append(("progress", "must be between 0 and 100"))
    if len(request.message) > 500 or "\x00" in request.message:
        bad.append(("message", "must be at most 500 characters, without NUL"))
    if bad:
        raise invalid_argument(bad)
    assert parsed is not None
    return parsed


def complete_request(request: worker_service_pb2.CompleteJobRequest) -> uuid.UUID:
    bad: Violations = []
    parsed = _attempt_of(request, bad)
    which = request.WhichOneof("result")
    if which == "success":
        s = request.success
        if not s.outputs:
            bad.append(("success.outputs", "must not be empty"))
        if len(s.outputs) > MAX_OUTPUTS:
            bad.append(("success.outputs", f"must be at most {MAX_OUTPUTS}"))
        if sorted(o.index for o in s.outputs) != list(range(len(s.outputs))):
            bad.append(("success.outputs.index", "must number the outputs 0, 1, 2, ..."))
        for i, o in enumerate(s.outputs):
            where = f"success.outputs[{i}]"
            for name in ("bucket", "key", "content_type", "sha256"):
                value = getattr(o, name)
                if not value or "\x00" in value or len(value) > 1024:
                    bad.append((f"{where}.{name}", "must be set (at most 1024 characters)"))
            if not (o.byte_size > 0 and o.width > 0 and o.height > 0) or not (
                0 <= o.duration_seconds <= _MAX_DURATION_SECONDS
            ):
                bad.append((where, "byte_size, width and height must be positive"))
            # A worker records only files of the job it was given, never another job's objects
            # (job_service would otherwise mint URLs for them): the key must be exactly the one
            # the layout gives that output, so no `..` or other spelling can point elsewhere.
            if parsed is not None and not keys.is_output_key(
                o.key, str(parsed), request.attempt, o.index, o.content_type
            ):
                expected = f"{keys.job_prefix(str(parsed))}{request.attempt}/output-{o.index}.<ext>"
                bad.append((f"{where}.key", f"must be {expected} for its content type"))
            if o.url:
                bad.append((f"{where}.url", "is minted at read time and must not be sent"))
        if s.HasField("generation_time") and not (
            0 <= s.generation_time.seconds <= _MAX_DURATION_SECONDS
            and 0 <= s.generation_time.nanos < 1_000_000_000
        ):
            bad.append(("success.generation_time", "must be between 0 and 24 hours"))
        for name in ("model", "status_message"):
            if len(getattr(s, name)) > 500 or "\x00" in getattr(s, name):
                bad.append((f"success.{name}", "must be at most 500 characters, without NUL"))
    elif which == "failure":
        f = request.failure
        if not f.code or f.code not in job_pb2.ErrorCode.values():
            bad.append(("failure.code", "must be a known error code"))
        if "\x00" in f.message:
            bad.append(("failure.message", "must not contain NUL characters"))
    else:
        bad.append(("result", "one of success or failure is required"))
    if bad:
        raise invalid_argument(bad)
    assert parsed is not None
    return parsed
