"""records: the field lists that copy columns to messages and back name exactly what they must."""

from __future__ import annotations

import dataclasses
import uuid
from types import SimpleNamespace

from media.v1 import job_pb2
from services.common.lifecycle import JobState
from services.job_service.records import OUTPUT_FIELDS, output_rows, to_output
from services.job_service.schema import jobs, outputs
from services.media_worker.media_probe import MediaInfo


def test_output_fields_are_the_shared_columns_and_message_fields() -> None:
    assert set(OUTPUT_FIELDS) == set(outputs.c.keys()) - {"job_id", "idx"}
    minted = {"url", "url_expire_time"}  # at read time, never stored
    assert set(OUTPUT_FIELDS) == set(job_pb2.Output.DESCRIPTOR.fields_by_name) - {"index", *minted}


def test_what_is_copied_by_field_name_exists_on_the_other_side() -> None:
    # The worker builds an Output from a MediaInfo; the store reads a JobState from a jobs row
    # and writes one back.
    probed = {f.name for f in dataclasses.fields(MediaInfo)}
    assert probed == set(OUTPUT_FIELDS) - {"bucket", "key"}
    assert {f.name for f in dataclasses.fields(JobState)} <= set(jobs.c.keys())


def test_an_output_survives_a_round_trip_through_its_row() -> None:
    output = job_pb2.Output(
        index=1,
        bucket="media",
        key="jobs/j/1/output-1.png",
        content_type="image/png",
        byte_size=10,
        width=2,
        height=3,
        duration_seconds=0.5,
        sha256="ab",
    )
    job_id = uuid.uuid4()
    [row] = output_rows(job_id, [output])
    assert row["job_id"] == job_id and row["idx"] == 1
    assert to_output(SimpleNamespace(**row)) == output  # type: ignore[arg-type]
