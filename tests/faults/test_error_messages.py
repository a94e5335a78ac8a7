"""What a job's owner reads when object storage goes away: plain words about what failed and
whether the job will be retried, never an endpoint, a host, an object key, a local path or a
traceback. Those go to the worker's log, on lines that carry the job ID.

S3 (moto) is stopped and started again under running jobs. moto keeps everything in memory, so
when it returns the test puts back what real storage would still hold (the bucket, an input
image) before the workers may look.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable

import grpc
import pytest
from PIL import Image

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2
from services.common import keys
from services.common.lifecycle import FINISHED, QUEUED, SUCCEEDED
from tests.conftest import workers_paused
from tests.faults.helpers import WAIT_SECONDS, FaultStack, eventually

pytestmark = pytest.mark.faults

STACK_WORKERS = 1
# Attempts enough to outlast the outage: the job must still be retried when storage returns.
STACK_ENV = {"MAX_ATTEMPTS": "100"}
# Long enough that S3 goes away while the video is still being made.
VIDEO = job_pb2.VideoParams(prompt="through the outage", duration_seconds=8, number_of_videos=1)
ErrorCode = job_pb2.ErrorCode

UPLOAD_WORDS = "the output could not be stored; retried while the job has attempts left"
INPUT_WORDS = (
    "the input image could not be read from storage; retried while the job has attempts left"
)


def leaks(text: str, fault: FaultStack) -> list[str]:
    """The internal details `text` gives away."""
    endpoint = fault.deps.s3_endpoint_url.removeprefix("http://")
    words = ("http", "127.0.0.1", "localhost", endpoint, "/tmp", "jobs/", "Traceback", 'File "')
    return [word for word in words if word in text]


def assert_plain(jobs: Iterable[job_pb2.Job], fault: FaultStack) -> None:
    for job in jobs:
        for field, text in (("status_message", job.status_message), ("error", job.error.message)):
            assert not leaks(text, fault), (job.version, field, text, leaks(text, fault))


async def open_watch(fault: FaultStack, job_id: str) -> asyncio.Task[list[job_pb2.Job]]:
    """Every message of a WatchJob stream opened now, to its end."""
    call = fault.clients.notifier.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=fault.user
    )
    stream = call.__aiter__()
    first = (await asyncio.wait_for(stream.__anext__(), WAIT_SECONDS)).job

    async def rest() -> list[job_pb2.Job]:
        return [first, *[message.job async for message in stream]]

    return asyncio.create_task(rest())


async def snapshots_until(
    fault: FaultStack, job_id: str, seen: list[job_pb2.Job], code: ErrorCode.ValueType
) -> job_pb2.Job:
    """Polls GetJob, keeping every state it reads in `seen`, until the job is back in the
    queue after a failure with `code`: a retry."""

    async def probe() -> job_pb2.Job | None:
        job = await fault.get(job_id)
        seen.append(job)
        retried = job.status == QUEUED and job.error.code == code
        assert job.status not in FINISHED, job
        return job if retried else None

    return await eventually(probe, f"job {job_id} to be retried after {ErrorCode.Name(code)}")


async def s3_back(fault: FaultStack, objects: dict[str, bytes] | None = None) -> None:
    """Starts moto again with the bucket (and `objects`) real storage would have kept."""
    moto = fault.deps.s3
    assert moto is not None
    await fault.spawn(moto.start)
    await asyncio.to_thread(fault.ensure_bucket)
    for key, body in (objects or {}).items():
        await asyncio.to_thread(fault.s3.put_object, Bucket="media", Key=key, Body=body)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def worker_details(fault: FaultStack, job_id: str, msg: str) -> list[str]:
    """The worker's log lines about the job that start with `msg`, as text."""
    return [str(record) for _, record in fault.worker_records(job_id, msg)]


async def test_an_s3_outage_under_a_running_job_reads_as_plain_words_then_the_retry_succeeds(
    fault: FaultStack,
) -> None:
    moto = fault.deps.s3
    assert moto is not None
    job = await fault.create(video=VIDEO)
    watching = await open_watch(fault, job.id)
    await fault.wait_generating(job.id)

    seen: list[job_pb2.Job] = []
    await fault.spawn(moto.stop)
    try:
        retried = await snapshots_until(fault, job.id, seen, ErrorCode.ERROR_CODE_UPLOAD_FAILED)
        # While storage is down, a create that must store an input image is refused, and says
        # so without naming the endpoint.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fault.clients.jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    image=job_pb2.ImageParams(
                        prompt="edit me",
                        size="256x256",
                        input_image=job_pb2.InputImage(data=png(), mime_type="image/png"),
                    )
                ),
                metadata=fault.user,
                timeout=60,
            )
        refused = caught.value
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert not leaks(refused.details() or "", fault), refused.details()
    finally:
        await s3_back(fault)

    assert retried.error.message == UPLOAD_WORDS
    assert retried.status_message == f"retrying after attempt {retried.attempt}: {UPLOAD_WORDS}"
    done = await fault.wait_terminal(job.id)
    assert done.status == SUCCEEDED, done.error
    assert done.attempt > retried.attempt and len(done.outputs) == 1
    events = await asyncio.wait_for(watching, WAIT_SECONDS)
    assert events[-1].status == SUCCEEDED
    failures = [e for e in events if e.error.code == ErrorCode.ERROR_CODE_UPLOAD_FAILED]
    assert failures and all(e.error.message == UPLOAD_WORDS for e in failures)
    assert_plain([*seen, *events, done], fault)
    # The detail is the operator's: in the worker's log, on a line with the job's ID.
    details = worker_details(fault, job.id, "upload failed: ")
    assert details and all(fault.deps.s3_endpoint_url in d for d in details), details


async def test_an_input_image_storage_cannot_give_reads_as_plain_words_then_the_retry_succeeds(
    fault: FaultStack,
) -> None:
    moto = fault.deps.s3
    assert moto is not None
    image = png()
    params = job_pb2.ImageParams(
        prompt="an edit",
        size="256x256",
        input_image=job_pb2.InputImage(data=image, mime_type="image/png"),
    )
    # Stored while S3 is up; the worker looks for it only once S3 is gone.
    with workers_paused(fault.services):
        job = await fault.create(image=params)
        watching = await open_watch(fault, job.id)
        await fault.spawn(moto.stop)
    seen: list[job_pb2.Job] = []
    try:
        retried = await snapshots_until(fault, job.id, seen, ErrorCode.ERROR_CODE_INTERNAL)
    finally:
        # Back with what it held, before the workers look again (moto forgot it all).
        with workers_paused(fault.services):
            await s3_back(fault, {keys.input_key(job.id): image})

    assert retried.error.message == INPUT_WORDS
    assert retried.status_message == f"retrying after attempt {retried.attempt}: {INPUT_WORDS}"
    done = await fault.wait_terminal(job.id)
    assert done.status == SUCCEEDED, done.error
    events = await asyncio.wait_for(watching, WAIT_SECONDS)
    assert events[-1].status == SUCCEEDED
    assert_plain([*seen, *events, done], fault)
    details = worker_details(fault, job.id, "input image unusable: ")
    assert details and all(keys.input_key(job.id) in d for d in details), details
