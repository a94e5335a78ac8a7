"""Mapping between database rows and media.v1 messages: jobs and outputs rows to and from
messages (a jobs row read with its outputs rows), and a job's outbox rows (its dispatch and status
event)."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from google.protobuf.message import Message
from sqlalchemy import Connection, select

from media.v1 import events_pb2, job_pb2
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
) -> list[OutboxValues]:
    """The outbox rows of what a transition emits: a dispatch (with the job's parameters) and the
    job's status event (with its owner, for the notifier's ownership checks and feeds)."""
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
            payload = events_pb2.JobEvent(job=job, owner=owner).SerializeToString()
        rows.append({"subject": subject, "payload": payload, "headers": headers})
    return rows
