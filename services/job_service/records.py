"""Mapping between database rows and media.v1 messages."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.message import Message

from media.v1 import job_pb2

TERMINAL = frozenset(
    {job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELED}
)


def status_name(status: int) -> str:
    return job_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def digest(message: Message) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def to_job(row: Any, outputs: Iterable[Any] = ()) -> job_pb2.Job:
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


def to_output(row: Any) -> job_pb2.Output:
    return job_pb2.Output(
        index=row.idx,
        bucket=row.bucket,
        key=row.key,
        content_type=row.content_type,
        byte_size=row.byte_size,
        width=row.width,
        height=row.height,
        duration_seconds=row.duration_seconds,
        sha256=row.sha256,
    )


def output_rows(job_id: Any, outputs: Sequence[job_pb2.Output]) -> list[dict[str, Any]]:
    return [
        {
            "job_id": job_id,
            "idx": o.index,
            "bucket": o.bucket,
            "key": o.key,
            "content_type": o.content_type,
            "byte_size": o.byte_size,
            "width": o.width,
            "height": o.height,
            "duration_seconds": o.duration_seconds,
            "sha256": o.sha256,
        }
        for o in outputs
    ]
