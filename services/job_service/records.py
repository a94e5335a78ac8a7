"""Mapping between database rows and media.v1 messages: jobs and outputs rows to and from
messages, and a job's outbox rows (its dispatch and status event)."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from google.protobuf.message import Message

from media.v1 import events_pb2, job_pb2
from services.common import jetstream, lifecycle
from services.common.lifecycle import Emit, ErrorCode, Kind, Status
from services.job_service.outbox import OutboxValues


class JobRow(Protocol):
    """The columns of a jobs row that we read (a Row of select(jobs) or RETURNING jobs; see
    schema.jobs)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def request_digest(self) -> bytes | None: ...
    @property
    def kind(self) -> Kind: ...
    @property
    def status(self) -> Status: ...
    @property
    def progress(self) -> int: ...
    @property
    def status_message(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def params(self) -> bytes: ...
    @property
    def model(self) -> str: ...
    @property
    def error_code(self) -> ErrorCode: ...
    @property
    def error_message(self) -> str: ...
    @property
    def result_digest(self) -> bytes | None: ...
    @property
    def generation_ms(self) -> int | None: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def updated_at(self) -> dt.datetime: ...
    @property
    def started_at(self) -> dt.datetime | None: ...
    @property
    def finished_at(self) -> dt.datetime | None: ...


class OutputRow(Protocol):
    """The columns of an outputs row that we read (see schema.outputs)."""

    @property
    def job_id(self) -> uuid.UUID: ...
    @property
    def idx(self) -> int: ...
    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def byte_size(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def duration_seconds(self) -> float: ...
    @property
    def sha256(self) -> str: ...


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


def digest(message: Message) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


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
) -> list[OutboxValues]:
    """The outbox rows of what a transition emits: a dispatch (with the job's parameters) and the
    job's status event."""
    rows: list[OutboxValues] = []
    for what in emit:
        if what is Emit.DISPATCH:
            assert params is not None, "a dispatch carries the job's parameters"
            kind = lifecycle.kind_name(job.kind)
            dispatch = events_pb2.JobDispatch(job_id=job.id, kind=job.kind)
            getattr(dispatch, kind).CopyFrom(params)
            subject, payload = jetstream.dispatch_subject(kind), dispatch.SerializeToString()
        else:
            subject = jetstream.event_subject(job.id)
            payload = events_pb2.JobEvent(job=job).SerializeToString()
        rows.append({"subject": subject, "payload": payload, "headers": headers})
    return rows
