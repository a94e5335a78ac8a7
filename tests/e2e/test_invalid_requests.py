"""Every invalid field answers INVALID_ARGUMENT naming it, over the wire, and writes nothing."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common.errors import field_violations
from tests.unit.test_validation import png

pytestmark = pytest.mark.e2e


def image(**kw):  # type: ignore[no-untyped-def]
    return job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(**kw))


def video(**kw):  # type: ignore[no-untyped-def]
    return job_service_pb2.CreateJobRequest(video=job_pb2.VideoParams(**kw))


CASES = [
    (job_service_pb2.CreateJobRequest(), "params"),
    (image(prompt=""), "image.prompt"),
    (image(prompt="x" * 9000), "image.prompt"),
    (image(prompt="a", number_of_images=5), "image.number_of_images"),
    (image(prompt="a", size="4096x4096"), "image.size"),
    (image(prompt="a", format=42), "image.format"),
    (image(prompt="a", style=42), "image.style"),
    (image(prompt="a", quality=42), "image.quality"),
    (image(prompt="a", model="unknown-model"), "image.model"),
    (
        image(prompt="a", input_image=job_pb2.InputImage(data=b"GIF89a not really")),
        "image.input_image.data",
    ),
    (
        image(prompt="a", input_image=job_pb2.InputImage(data=png(), mime_type="image/jpeg")),
        "image.input_image.mime_type",
    ),
    (video(prompt=""), "video.prompt"),
    (video(prompt="a", aspect_ratio=9), "video.aspect_ratio"),
    (video(prompt="a", duration_seconds=30), "video.duration_seconds"),
    (video(prompt="a", number_of_videos=0 - 1), "video.number_of_videos"),
    (video(prompt="a", person_generation=9), "video.person_generation"),
    (video(prompt="a", model="veo-0"), "video.model"),
    (
        video(prompt="a", input_image=job_pb2.InputImage(data=b"\x89PNG\r\n\x1a\n broken")),
        "video.input_image.data",
    ),
    (
        job_service_pb2.CreateJobRequest(
            request_id="x" * 200, image=job_pb2.ImageParams(prompt="a")
        ),
        "request_id",
    ),
]


def counts(deps) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    engine = sa.create_engine(deps.database_url)
    with engine.connect() as conn:
        jobs = conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one()
    engine.dispose()
    s3 = deps.s3_client()
    objects = s3.list_objects_v2(Bucket="media").get("KeyCount", 0)
    return jobs, objects


async def test_each_invalid_field_is_named_and_nothing_is_written(clients, deps) -> None:
    before = counts(deps)
    for request, field in CASES:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.jobs.CreateJob(request, metadata=clients.alice)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in error.details()
        assert field in [f for f, _ in field_violations(error)], (field, field_violations(error))
    assert counts(deps) == before  # no job row, no stored input image


async def test_malformed_ids_and_worker_fields_are_invalid_argument(clients) -> None:
    for call in (
        clients.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id="1; DROP TABLE jobs"), metadata=clients.alice
        ),
        clients.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=""), metadata=clients.alice),
        clients.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=-5), metadata=clients.alice
        ),
        clients.workers.ReportProgress(
            worker_service_pb2.ReportProgressRequest(job_id="x", progress=101),
            metadata=clients.worker,
        ),
        clients.workers.CompleteJob(
            worker_service_pb2.CompleteJobRequest(job_id="x"), metadata=clients.worker
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value)


async def test_an_unknown_job_is_not_found(clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id="01a209ac-9f4e-7224-8e25-1337f2bc5bcc"),
            metadata=clients.alice,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
