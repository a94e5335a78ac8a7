"""Command-line values -> media.v1 requests, and what the CLI decides on its own on the way: the
spellings of enum values, request IDs and the type of an input image.

Limits (counts, sizes, durations) are left to job_service, the one place that validates them, so
the CLI never disagrees with the server.
"""

from __future__ import annotations

import argparse
import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import EnumDescriptor
from PIL import Image, UnidentifiedImageError

from media.v1 import job_pb2, job_service_pb2, notifications_pb2, webhook_service_pb2
from services.common import lifecycle


class InputError(ValueError):
    """A command-line value the CLI cannot turn into a request (shown without a traceback)."""


def _choices(enum: EnumDescriptor, prefix: str) -> dict[str, int]:
    """CLI spellings of a proto enum: IMAGE_STYLE_DIGITAL_ART -> "digital_art" (UNSPECIFIED left
    out, since leaving the flag off means that)."""
    return {
        value.name.removeprefix(prefix).lower(): value.number
        for value in enum.values
        if not value.name.endswith("_UNSPECIFIED")
    }


IMAGE_FORMATS = _choices(job_pb2.ImageFormat.DESCRIPTOR, "IMAGE_FORMAT_")
IMAGE_STYLES = _choices(job_pb2.ImageStyle.DESCRIPTOR, "IMAGE_STYLE_")
IMAGE_QUALITIES = _choices(job_pb2.ImageQuality.DESCRIPTOR, "IMAGE_QUALITY_")
PERSON_GENERATIONS = _choices(job_pb2.PersonGeneration.DESCRIPTOR, "PERSON_GENERATION_")
ASPECT_RATIOS = {
    name.replace("_", ":"): number
    for name, number in _choices(job_pb2.AspectRatio.DESCRIPTOR, "ASPECT_RATIO_").items()
}
KINDS: dict[str, int] = dict(lifecycle.KINDS_BY_NAME)
STATUSES = {lifecycle.status_name(status).lower(): int(status) for status in lifecycle.STATUSES}
DELIVERY_STATES = _choices(webhook_service_pb2.DeliveryState.DESCRIPTOR, "DELIVERY_STATE_")


def normalize_choice(text: str) -> str:
    """Lets `digital-art`, `DIGITAL_ART` and `digital_art` name the same choice."""
    return text.strip().lower().replace("-", "_")


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class InputFile:
    data: bytes
    mime_type: str


def read_input_image(path: str) -> InputFile:
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
    return InputFile(data, mime_type)


def create_request(args: argparse.Namespace) -> job_service_pb2.CreateJobRequest:
    """The CreateJobRequest that `create image|video` arguments describe, without the input image
    (uploaded first: see with_upload). Limits (counts, sizes, durations) are left to job_service,
    the one place that checks them."""
    params: job_pb2.ImageParams | job_pb2.VideoParams
    if args.kind == "image":
        request = job_service_pb2.CreateJobRequest(
            image=job_pb2.ImageParams(
                size=args.size,
                format=args.format,
                number_of_images=args.count,
                style=args.style,
                quality=args.quality,
            )
        )
        params = request.image
    else:
        request = job_service_pb2.CreateJobRequest(
            video=job_pb2.VideoParams(
                negative_prompt=args.negative_prompt,
                aspect_ratio=args.aspect_ratio,
                duration_seconds=args.duration,
                number_of_videos=args.count,
                person_generation=args.person_generation,
            )
        )
        params = request.video
    # What both kinds share.
    request.request_id = args.request_id or new_request_id()
    params.prompt = args.prompt
    params.model = args.model
    if args.webhook_events is not None and not args.webhook:
        raise InputError("--webhook-events goes with --webhook URL")
    if args.webhook:
        request.webhook.CopyFrom(
            webhook_service_pb2.JobWebhook(url=args.webhook, event_types=args.webhook_events or [])
        )
    return request


def with_upload(request: job_service_pb2.CreateJobRequest, upload_id: str, mime_type: str) -> None:
    """Points the request's input image at an upload (CreateInputUpload, then the PUT)."""
    which = request.WhichOneof("params")
    assert which is not None
    params: job_pb2.ImageParams | job_pb2.VideoParams = getattr(request, which)
    params.input_image.CopyFrom(job_pb2.InputImage(upload_id=upload_id, mime_type=mime_type))


def list_request(args: argparse.Namespace) -> job_service_pb2.ListJobsRequest:
    return job_service_pb2.ListJobsRequest(
        page_size=args.page_size, page_token=args.page_token, kind=args.kind, status=args.status
    )


# --- webhooks and notifications ----------------------------------------------------------------


def comma_list(text: str, choices: Sequence[str], what: str) -> list[str]:
    """`a,b` -> ["a", "b"], each one of `choices` (an empty text: none). Raises ValueError naming
    the bad value and the choices."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    for value in values:
        if value not in choices:
            raise ValueError(f"{value!r} is not {what}; choose from {', '.join(choices)}")
    return values


def endpoint_kinds(names: Sequence[str]) -> list[job_pb2.MediaKind.ValueType]:
    return [lifecycle.KINDS_BY_NAME[name] for name in names]


def create_endpoint_request(
    args: argparse.Namespace,
) -> webhook_service_pb2.CreateWebhookEndpointRequest:
    return webhook_service_pb2.CreateWebhookEndpointRequest(
        url=args.url,
        event_types=args.events or [],
        kinds=endpoint_kinds(args.kinds or []),
        description=args.description or "",
    )


def update_endpoint_request(
    args: argparse.Namespace,
) -> webhook_service_pb2.UpdateWebhookEndpointRequest:
    """Sets, and names in update_mask, only what the flags give (`--kinds ''`: every kind)."""
    request = webhook_service_pb2.UpdateWebhookEndpointRequest(endpoint_id=args.endpoint_id)
    if args.url is not None:
        request.url = args.url
        request.update_mask.append("url")
    if args.events is not None:
        request.event_types.extend(args.events)
        request.update_mask.append("event_types")
    if args.kinds is not None:
        request.kinds.extend(endpoint_kinds(args.kinds))
        request.update_mask.append("kinds")
    if args.description is not None:
        request.description = args.description
        request.update_mask.append("description")
    if args.enabled is not None:
        request.enabled = args.enabled
        request.update_mask.append("enabled")
    if not request.update_mask:
        raise InputError(
            "webhooks update: give at least one of --url, --events, --kinds, --description, "
            "--enable, --disable"
        )
    return request


def deliveries_request(
    args: argparse.Namespace,
) -> webhook_service_pb2.ListWebhookDeliveriesRequest:
    return webhook_service_pb2.ListWebhookDeliveriesRequest(
        endpoint_id=args.endpoint_id,
        page_size=args.page_size,
        page_token=args.page_token,
        state=args.state,
    )


def mark_read_request(args: argparse.Namespace) -> notifications_pb2.MarkNotificationsReadRequest:
    if bool(args.notification_ids) == bool(args.all):
        raise InputError("notifications read: give notification IDs or --all (not both)")
    return notifications_pb2.MarkNotificationsReadRequest(
        notification_ids=args.notification_ids, all=args.all
    )
