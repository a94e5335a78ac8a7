"""Jobs through the running services: the bytes behind each URL are what was asked for."""

from __future__ import annotations

import asyncio
import hashlib

import av
import pytest
from PIL import Image

from media.v1 import job_pb2, job_service_pb2
from tests.e2e.helpers import as_file, create, fetch, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("fmt", "pil_format", "size", "count"),
    [
        (job_pb2.IMAGE_FORMAT_PNG, "PNG", "1024x1024", 1),
        (job_pb2.IMAGE_FORMAT_JPEG, "JPEG", "1344x768", 2),
        (job_pb2.IMAGE_FORMAT_WEBP, "WEBP", "512x512", 3),
    ],
)
async def test_image_job_outputs_decode_as_requested(clients, fmt, pil_format, size, count) -> None:
    job = await create(
        clients,
        clients.alice,
        image=job_pb2.ImageParams(
            prompt="a lighthouse at dusk", format=fmt, size=size, number_of_images=count
        ),
    )
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    assert len(done.outputs) == count
    width, height = map(int, size.split("x"))
    for index, output in enumerate(done.outputs):
        data = await fetch(output.url)
        assert hashlib.sha256(data).hexdigest() == output.sha256
        assert len(data) == output.byte_size
        image = Image.open(as_file(data))
        assert image.format == pil_format
        assert image.size == (width, height) == (output.width, output.height)
        assert output.index == index
        assert output.key.startswith(f"jobs/{job.id}/")
        assert output.content_type == Image.MIME[pil_format]


@pytest.mark.parametrize(
    ("aspect", "seconds", "landscape"),
    [(job_pb2.ASPECT_RATIO_16_9, 4, True), (job_pb2.ASPECT_RATIO_9_16, 5, False)],
)
async def test_video_job_outputs_are_h264_mp4_of_the_requested_shape(
    clients, aspect, seconds, landscape
) -> None:
    job = await create(
        clients,
        clients.alice,
        video=job_pb2.VideoParams(
            prompt="waves on a beach", aspect_ratio=aspect, duration_seconds=seconds
        ),
    )
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    [output] = done.outputs
    assert output.content_type == "video/mp4"
    data = await fetch(output.url)
    assert hashlib.sha256(data).hexdigest() == output.sha256
    with av.open(as_file(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = float(container.duration or 0) / av.time_base
    assert (width, height) == (output.width, output.height)
    ratio = width / height
    assert ratio == pytest.approx(16 / 9 if landscape else 9 / 16, rel=0.01)
    assert duration == pytest.approx(seconds, abs=0.25)
    assert output.duration_seconds == pytest.approx(seconds, abs=0.25)


async def test_retried_create_with_the_same_request_id_yields_one_job(clients) -> None:
    request = dict(
        request_id="retry-me-42", image=job_pb2.ImageParams(prompt="one cat", size="256x256")
    )
    first = await clients.jobs.CreateJob(
        job_service_pb2.CreateJobRequest(**request), metadata=clients.alice
    )
    # Concurrent retries too: all answer with the first job.
    again = await asyncio.gather(
        *(
            clients.jobs.CreateJob(
                job_service_pb2.CreateJobRequest(**request), metadata=clients.alice
            )
            for _ in range(8)
        )
    )
    assert first.created
    assert {r.job.id for r in again} == {first.job.id}
    assert not any(r.created for r in again)
    listed = await clients.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(page_size=100), metadata=clients.alice
    )
    assert sum(1 for j in listed.jobs if j.request_id == "retry-me-42") == 1
    # Another user may use the same key for their own job.
    theirs = await clients.jobs.CreateJob(
        job_service_pb2.CreateJobRequest(**request), metadata=clients.bob
    )
    assert theirs.created and theirs.job.id != first.job.id
    await wait_terminal(clients, clients.alice, first.job.id)
    await wait_terminal(clients, clients.bob, theirs.job.id)
