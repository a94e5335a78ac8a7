"""The JSON body of a delivery: the event's type, when the job changed, and the job as proto JSON
(with fresh output URLs for a succeeded job)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from media.v1 import job_pb2

CONTENT_TYPE = "application/json"
USER_AGENT = "media-pipeline-webhooks/1"


def job_data(job: job_pb2.Job) -> dict[str, Any]:
    data = json_format.MessageToDict(
        job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["version"] = job.version  # proto JSON writes int64 as a string; receivers compare it
    return data


def body(event_type: str, job: job_pb2.Job) -> bytes:
    """`job`: the job as the change left it, its outputs carrying fresh URLs when it succeeded."""
    document = {
        "type": event_type,
        "timestamp": job.update_time.ToJsonString(),  # RFC 3339, UTC
        "data": job_data(job),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def with_outputs(job: job_pb2.Job, fresh: job_pb2.Job) -> job_pb2.Job:
    """The event's job with the outputs of a fresh read (their URLs are signed at read time)."""
    merged = job_pb2.Job()
    merged.CopyFrom(job)
    del merged.outputs[:]
    merged.outputs.extend(fresh.outputs)
    return merged
