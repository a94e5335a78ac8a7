"""Mapping between database rows and media.v1 messages: jobs and outputs rows to and from
messages (a jobs row read with its outputs rows), a job's outbox rows (its dispatch and status
event), notifications, webhook endpoints and deliveries."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from google.protobuf.message import Message
from sqlalchemy import Connection, select

from media.v1 import events_pb2, job_pb2, notifications_pb2, webhook_service_pb2
from services.common import jetstream, lifecycle
from services.common.lifecycle import Emit, ErrorCode, Kind, Status
from services.job_service import schema
from services.job_service.outbox import OutboxValues


class JobRow(Protocol):
    """The columns of a jobs row that we read (a Row of select(jobs) or RETURNING jobs; see
    schema.jobs). Rows are read, never assigned to."""

    id: uuid.UUID
    owner: str
    request_id: str | None
    request_digest: bytes | None
    kind: Kind
    status: Status
    progress: int
    status_message: str
    attempt: int
    params: bytes
    model: str
    error_code: ErrorCode
    error_message: str
    result_digest: bytes | None
    generation_ms: int | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class OutputRow(Protocol):
    """The columns of an outputs row that we read (see schema.outputs)."""

    job_id: uuid.UUID
    idx: int
    bucket: str
    key: str
    content_type: str
    byte_size: int
    width: int
    height: int
    duration_seconds: float
    sha256: str


# The columns of an outputs row that are fields of job_pb2.Output by the same name; besides them a
# row has job_id and idx (the message's index), a message its url and url_expire_time (minted at
# read time, never stored).
OUTPUT_FIELDS = (
    "bucket",
    "key",
    "content_type",
    "byte_size",
    "width",
    "height",
    "duration_seconds",
    "sha256",
)


def digest(message: Message, *extra: bytes) -> bytes:
    """sha256 of the message, and of `extra` after it: what stands in for bytes the message no
    longer holds (an input image's own sha256, so its bytes are not serialized again)."""
    hashed = hashlib.sha256(message.SerializeToString(deterministic=True))
    for part in extra:
        hashed.update(part)
    return hashed.digest()


def to_job(row: JobRow, outputs: Iterable[OutputRow] = ()) -> job_pb2.Job:
    job = job_pb2.Job(
        id=str(row.id),
        kind=row.kind,
        status=row.status,
        progress=row.progress,
        status_message=row.status_message,
        attempt=row.attempt,
        request_id=row.request_id or "",
        model=row.model,
        version=row.version,
    )
    if row.kind == job_pb2.MEDIA_KIND_IMAGE:
        job.image.ParseFromString(row.params)
    else:
        job.video.ParseFromString(row.params)
    if row.error_code:
        job.error.code = row.error_code
        job.error.message = row.error_message
    if row.generation_ms is not None:
        job.generation_time.FromMilliseconds(row.generation_ms)
    job.create_time.FromDatetime(row.created_at)
    job.update_time.FromDatetime(row.updated_at)
    if row.started_at is not None:
        job.start_time.FromDatetime(row.started_at)
    if row.finished_at is not None:
        job.end_time.FromDatetime(row.finished_at)
    job.outputs.extend(to_output(o) for o in outputs)
    return job


def to_jobs(conn: Connection, rows: Sequence[JobRow]) -> list[job_pb2.Job]:
    """The jobs of `rows`, in their order, each with its outputs (read in one query)."""
    found: dict[uuid.UUID, list[OutputRow]] = defaultdict(list)
    if rows:
        for output in conn.execute(
            select(schema.outputs)
            .where(schema.outputs.c.job_id.in_([row.id for row in rows]))
            .order_by(schema.outputs.c.idx)
        ):
            found[output.job_id].append(output)
    return [to_job(row, found.get(row.id, ())) for row in rows]


def to_output(row: OutputRow) -> job_pb2.Output:
    return job_pb2.Output(index=row.idx, **{name: getattr(row, name) for name in OUTPUT_FIELDS})


def output_rows(job_id: uuid.UUID, outputs: Sequence[job_pb2.Output]) -> list[dict[str, object]]:
    return [
        {"job_id": job_id, "idx": o.index, **{name: getattr(o, name) for name in OUTPUT_FIELDS}}
        for o in outputs
    ]


def outbox_rows(
    emit: Sequence[Emit],
    job: job_pb2.Job,
    params: job_pb2.ImageParams | job_pb2.VideoParams | None,
    headers: dict[str, str] | None,
    *,
    owner: str,
    event_type: lifecycle.EventType,
    notification: notifications_pb2.Notification | None = None,
) -> list[OutboxValues]:
    """The outbox rows of what a transition emits: a dispatch (with the job's parameters) and the
    job's status event (with its owner, for the notifier's ownership checks and feeds, what the
    change was, and the notification it left when it finished the job)."""
    rows: list[OutboxValues] = []
    for what in emit:
        if what is Emit.DISPATCH:
            assert params is not None, "a dispatch carries the job's parameters"
            kind = lifecycle.kind_name(job.kind)
            dispatch = events_pb2.JobDispatch(job_id=job.id, kind=job.kind)
            getattr(dispatch, kind).CopyFrom(params)
            subject, payload = jetstream.dispatch_subject(kind), dispatch.SerializeToString()
        else:
            subject = jetstream.event_subject(owner, job.id)
            event = events_pb2.JobEvent(
                job=job, owner=owner, type=event_type, notification=notification
            )
            payload = event.SerializeToString()
        rows.append({"subject": subject, "payload": payload, "headers": headers})
    return rows


class NotificationRow(Protocol):
    """The columns of a notifications row (see schema.notifications)."""

    id: uuid.UUID
    job_id: uuid.UUID
    type: str
    title: str
    message: str
    created_at: dt.datetime
    read_at: dt.datetime | None


def to_notification(row: NotificationRow) -> notifications_pb2.Notification:
    notification = notifications_pb2.Notification(
        id=str(row.id),
        type=row.type,
        title=row.title,
        message=row.message,
        job_id=str(row.job_id),
        read=row.read_at is not None,
    )
    notification.create_time.FromDatetime(row.created_at)
    return notification


class EndpointRow(Protocol):
    """The columns of a webhook_endpoints row that a WebhookEndpoint shows (never its secrets)."""

    id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    kinds: list[int]
    job_id: uuid.UUID | None
    previous_secret_expires_at: dt.datetime | None
    enabled: bool
    disabled_reason: str
    disabled_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


def to_endpoint(row: EndpointRow, now: dt.datetime) -> webhook_service_pb2.WebhookEndpoint:
    endpoint = webhook_service_pb2.WebhookEndpoint(
        id=str(row.id),
        url=row.url,
        event_types=row.event_types,
        kinds=row.kinds,  # type: ignore[arg-type]  # MediaKind values, stored as integers
        description=row.description,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        job_id=str(row.job_id) if row.job_id is not None else "",
    )
    if row.disabled_at is not None:
        endpoint.disable_time.FromDatetime(row.disabled_at)
    endpoint.create_time.FromDatetime(row.created_at)
    endpoint.update_time.FromDatetime(row.updated_at)
    expires = row.previous_secret_expires_at
    if expires is not None and expires > now:
        endpoint.previous_secret_expire_time.FromDatetime(expires)
    return endpoint


class DeliveryRow(Protocol):
    """The columns of a webhook_deliveries row that a WebhookDelivery shows."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_type: str
    job_id: uuid.UUID
    job_version: int
    state: int
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime


class AttemptRow(Protocol):
    """The columns of a webhook_attempts row (see schema.webhook_attempts)."""

    delivery_id: uuid.UUID
    number: int
    started_at: dt.datetime
    status_code: int
    latency_ms: int
    response_head: str
    error: str
    manual: bool


def to_delivery(
    row: DeliveryRow, attempts: Iterable[AttemptRow]
) -> webhook_service_pb2.WebhookDelivery:
    delivery = webhook_service_pb2.WebhookDelivery(
        id=str(row.id),
        endpoint_id=str(row.endpoint_id),
        event_type=row.event_type,
        job_id=str(row.job_id),
        job_version=row.job_version,
        state=row.state,  # type: ignore[arg-type]  # a DeliveryState value
    )
    delivery.create_time.FromDatetime(row.created_at)
    if row.state == webhook_service_pb2.DELIVERY_STATE_PENDING and row.next_attempt_at is not None:
        delivery.next_attempt_time.FromDatetime(row.next_attempt_at)
    for a in attempts:
        attempt = delivery.attempts.add(
            number=a.number,
            status_code=a.status_code,
            response_head=a.response_head,
            error=a.error,
            manual=a.manual,
        )
        attempt.start_time.FromDatetime(a.started_at)
        attempt.latency.FromMilliseconds(a.latency_ms)
    return delivery
