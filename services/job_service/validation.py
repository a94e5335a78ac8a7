"""Checks every field of a client request; returns the normalized request or raises
INVALID_ARGUMENT naming each offending field. Nothing is written before this passes."""

from __future__ import annotations

import functools
import hashlib
import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common import images, keys
from services.common.errors import invalid_argument
from services.common.ids import parse_uuid
from services.common.images import DEFAULT_IMAGE_SIZE, IMAGE_SIZES, IMAGE_TYPES
from services.job_service.settings import Limits

MIN_VIDEO_SECONDS = 4
DEFAULT_VIDEO_SECONDS = 8  # or Limits.max_video_seconds when that is lower
# A job asks for at most this many outputs, whatever the settings (they may only lower it).
MAX_OUTPUTS = 4
_MAX_DURATION_SECONDS = 24 * 3600.0  # of an output; also rules out NaN and infinity
MAX_REQUEST_ID_CHARS = 128
DEFAULT_PAGE_SIZE = 20

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


@dataclass
class ValidCreate:
    """A CreateJob request that passed every check. `request` is the caller's own message,
    normalized in place (defaults filled in, the input image's mime type set from its bytes) and
    without the inline image's bytes, which are in `image` instead: taken out of the request, the
    bytes are not copied again when it is hashed or stored."""

    request: job_service_pb2.CreateJobRequest
    kind: str  # "image" or "video": the name of the request's params field
    image: bytes | None = None  # inline input image (input_image.data)
    image_sha256: bytes = b""  # of `image`: stands in for the bytes in the request's digest
    upload_id: uuid.UUID | None = None  # input image uploaded after CreateInputUpload

    @property
    def params(self) -> job_pb2.ImageParams | job_pb2.VideoParams:
        params: job_pb2.ImageParams | job_pb2.VideoParams = getattr(self.request, self.kind)
        return params

    @property
    def input_field(self) -> str:
        """The input image's field name in errors, e.g. image.input_image."""
        return f"{self.kind}.input_image"

    def take_image(self) -> bytes:
        """The inline image's bytes, dropped from here (so that they are freed once the caller
        has stored them)."""
        image, self.image = self.image, None
        assert image is not None, "no inline image"
        return image


def create_request(request: job_service_pb2.CreateJobRequest, limits: Limits) -> ValidCreate:
    """Checks every field; normalizes the request in place (no copy of it, or of its image)."""
    bad: Violations = []
    if request.request_id:
        rid = request.request_id
        if len(rid) > MAX_REQUEST_ID_CHARS or not all(0x21 <= ord(c) <= 0x7E for c in rid):
            bad.append(
                ("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} printable ASCII characters")
            )
    which = request.WhichOneof("params")
    valid = ValidCreate(request, which or "")
    if which == "image":
        _image(request.image, limits, bad)
        if request.image.HasField("input_image"):
            _input_image(request.image.input_image, valid, limits, bad)
    elif which == "video":
        _video(request.video, limits, bad)
        if request.video.HasField("input_image"):
            _input_image(request.video.input_image, valid, limits, bad)
    else:
        bad.append(("params", "one of image or video is required"))
    if bad:
        raise invalid_argument(bad)
    return valid


def _image(p: job_pb2.ImageParams, limits: Limits, bad: Violations) -> None:
    _text(p.prompt, "image.prompt", limits.max_prompt_chars, bad, required=True)
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


def _input_image(
    img: job_pb2.InputImage, valid: ValidCreate, limits: Limits, bad: Violations
) -> None:
    """Checks the input image; an inline image's bytes move from `img` to `valid`."""
    field = valid.input_field
    if img.bucket or img.key:
        bad.append((f"{field}.key", "is set by the service; send data or upload_id only"))
    data = img.data  # the one copy of the bytes this process makes (each read of .data is one)
    if img.upload_id:
        if data:
            bad.append((f"{field}.upload_id", "send either data or upload_id, not both"))
        valid.upload_id = parse_uuid(img.upload_id)
        if valid.upload_id is None:
            bad.append((f"{field}.upload_id", "must be an upload_id CreateInputUpload returned"))
        if img.mime_type and img.mime_type not in IMAGE_TYPES:
            bad.append((f"{field}.mime_type", f"must be one of {', '.join(IMAGE_TYPES)}"))
        return  # the uploaded object itself is checked when the create claims it
    if not data:
        bad.append((f"{field}.data", "must not be empty (or send upload_id)"))
        return
    limit = min(limits.max_inline_image_bytes, limits.max_input_image_bytes)
    if len(data) > limit:
        bad.append(
            (
                f"{field}.data",
                f"must be at most {limit} bytes inline (got {len(data)}); send images up to "
                f"{limits.max_input_image_bytes} bytes with CreateInputUpload and "
                "input_image.upload_id instead",
            )
        )
        return
    header = images.read_header(data)
    if header is None:
        bad.append((f"{field}.data", "is not a PNG, JPEG or WEBP image"))
        return
    too_large = header.too_large()
    if too_large is not None:
        bad.append((f"{field}.data", too_large))
        return
    if not _decodes(data):
        bad.append((f"{field}.data", f"is not a complete {header.content_type} image"))
        return
    if img.mime_type and img.mime_type != header.content_type:
        bad.append(
            (f"{field}.mime_type", f"is {img.mime_type} but the data is {header.content_type}")
        )
    img.mime_type = header.content_type
    img.ClearField("data")
    valid.image = data
    valid.image_sha256 = hashlib.sha256(data).digest()


def input_upload_request(request: job_service_pb2.CreateInputUploadRequest, limits: Limits) -> None:
    bad: Violations = []
    if request.mime_type not in IMAGE_TYPES:
        bad.append(("mime_type", f"must be one of {', '.join(IMAGE_TYPES)}"))
    if not 0 < request.byte_size <= limits.max_input_image_bytes:
        bad.append(
            (
                "byte_size",
                f"must be between 1 and {limits.max_input_image_bytes} (the image's exact size)",
            )
        )
    if bad:
        raise invalid_argument(bad)


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
    size = page_size(request.page_size, limits, bad)
    _enum(request.kind, job_pb2.MediaKind, "kind", bad)
    _enum(request.status, job_pb2.JobStatus, "status", bad)
    if bad:
        raise invalid_argument(bad)
    return size


def page_size(value: int, limits: Limits, bad: Violations) -> int:
    """The page size a List call asked for: 0 means 20; larger than the maximum is coerced to
    it, as Google's AIP-158 asks."""
    if value < 0:
        bad.append(("page_size", "must not be negative"))
    return min(value or DEFAULT_PAGE_SIZE, limits.max_page_size)


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
