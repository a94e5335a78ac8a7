"""The delivery body: type, the job's change time, the job as proto JSON."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp

from media.v1 import job_pb2
from services.webhooks.payload import body, with_outputs


def test_the_body_carries_the_type_time_and_job() -> None:
    job = job_pb2.Job(
        id="0190b3a4-7e1d-7c3a-8f00-123456789abc",
        kind=job_pb2.MEDIA_KIND_IMAGE,
        status=job_pb2.JOB_STATUS_FAILED,
        version=12345678901,
        update_time=Timestamp(seconds=1767323045, nanos=500_000_000),
        error=job_pb2.JobError(code=job_pb2.ERROR_CODE_SAFETY_BLOCKED, message="blocked"),
    )
    document = json.loads(body("job.failed", job))
    assert document["type"] == "job.failed"
    assert document["timestamp"] == "2026-01-02T03:04:05.500Z"
    data = document["data"]
    assert data["id"] == job.id
    assert data["version"] == 12345678901  # an integer, not proto JSON's string
    assert data["status"] == "JOB_STATUS_FAILED"
    assert data["error"] == {"code": "ERROR_CODE_SAFETY_BLOCKED", "message": "blocked"}
    assert data["progress"] == 0  # fields without presence are written out
    assert data["outputs"] == []


def test_fresh_outputs_replace_the_events() -> None:
    event_job = job_pb2.Job(id="j", status=job_pb2.JOB_STATUS_SUCCEEDED, version=4)
    event_job.outputs.add(index=0, key="jobs/j/1/output-0.png")
    read = job_pb2.Job(id="j", status=job_pb2.JOB_STATUS_SUCCEEDED, version=4)
    read.outputs.add(index=0, key="jobs/j/1/output-0.png", url="https://s3/fresh")
    merged = with_outputs(event_job, read)
    assert [o.url for o in merged.outputs] == ["https://s3/fresh"]
    assert event_job.outputs[0].url == ""  # the event's job is left as it was
    data = json.loads(body("job.succeeded", merged))["data"]
    assert data["outputs"][0]["url"] == "https://s3/fresh"
