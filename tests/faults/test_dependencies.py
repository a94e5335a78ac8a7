"""NATS, Postgres and S3 go away and come back; the services ride it out by themselves.

One stack for the module; each test brings its dependency back (in `finally`), and the next test
starts by proving the stack works again.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2
from services.common.lifecycle import FAILED, SUCCEEDED
from tests.faults.helpers import (
    SMALL_IMAGE,
    WAIT_SECONDS,
    FaultStack,
    eventually,
)

pytestmark = pytest.mark.faults

STACK_WORKERS = 2
# A video that is still being made while a dependency goes away.
VIDEO = job_pb2.VideoParams(prompt="through the outage", duration_seconds=8, number_of_videos=2)


async def open_watch(fault: FaultStack, job_id: str) -> tuple[job_pb2.Job, asyncio.Task]:  # type: ignore[type-arg]
    """A WatchJob stream whose first message (the current state) has arrived, and a task that
    collects the rest."""
    call = fault.clients.notifier.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=fault.user
    )
    stream = call.__aiter__()
    first = (await asyncio.wait_for(stream.__anext__(), WAIT_SECONDS)).job

    async def rest() -> list[job_pb2.Job]:
        return [message.job async for message in stream]

    return first, asyncio.create_task(rest())


async def assert_succeeded_once(fault: FaultStack, job: job_pb2.Job, count: int) -> job_pb2.Job:
    done = await fault.wait_terminal(job.id)
    assert done.status == SUCCEEDED, (job.id, done.error)
    rows = await fault.output_rows(job.id)
    assert [r.idx for r in rows] == list(range(count))
    assert all(r.key.startswith(f"jobs/{job.id}/{done.attempt}/") for r in rows)
    # No event lost: the stream holds every version of the job, each once, in order.
    published = await fault.published_events(job.id)
    assert [j.version for j in published] == list(range(1, done.version + 1))
    return done


async def test_a_nats_restart_loses_no_job_and_no_event(fault: FaultStack) -> None:
    before = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]
    video = await fault.create(video=VIDEO)
    first, watching = await open_watch(fault, video.id)
    await fault.wait_generating(video.id)

    await fault.spawn(fault.deps.stop_nats)  # SIGTERM; JetStream keeps its files
    try:
        # CreateJob needs Postgres only: the jobs wait in the outbox.
        during = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]
    finally:
        await fault.spawn(fault.deps.start_nats)
    after = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]

    for job in [*before, *during, *after]:
        await assert_succeeded_once(fault, job, 1)
    done = await assert_succeeded_once(fault, video, VIDEO.number_of_videos)
    # The watcher opened before the restart followed the job to its end.
    seen = [first, *await asyncio.wait_for(watching, WAIT_SECONDS)]
    assert seen[-1].status == SUCCEEDED and seen[-1].version == done.version
    versions = [j.version for j in seen]
    assert versions == sorted(set(versions))

    async def drained() -> bool:
        return await fault.outbox_size() == 0

    await eventually(drained, "the outbox to be empty")


async def test_postgres_down_answers_unavailable_and_everything_resumes(
    fault: FaultStack,
) -> None:
    video = await fault.create(video=VIDEO)
    known = await fault.create(image=SMALL_IMAGE)
    await fault.wait_generating(video.id)

    await fault.spawn(fault.deps.stop_postgres)
    try:
        jobs, md = fault.clients.jobs, fault.user
        # A deadline far beyond any connect timeout: a hang would end DEADLINE_EXCEEDED.
        calls = {
            "CreateJob": jobs.CreateJob(
                job_service_pb2.CreateJobRequest(image=SMALL_IMAGE), metadata=md, timeout=60
            ),
            "GetJob": jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=known.id), metadata=md, timeout=60
            ),
            "ListJobs": jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=md, timeout=60),
            "CancelJob": jobs.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=video.id), metadata=md, timeout=60
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (name, caught.value)
        # Watching needs job_service's read of the job: UNAVAILABLE too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fault.watch(known.id)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        async def unready() -> bool:
            return await fault.readiness() == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(unready, "job_service to report NOT_SERVING")
        assert fault.services.job_service.running  # no crash
    finally:
        await fault.spawn(fault.deps.start_postgres)

    async def ready() -> bool:
        return await fault.readiness() == health_pb2.HealthCheckResponse.SERVING

    await eventually(ready, "job_service to be SERVING again")
    # The job in flight during the outage, and new ones, finish; the cancel above never happened.
    await assert_succeeded_once(fault, video, VIDEO.number_of_videos)
    await assert_succeeded_once(fault, known, 1)
    fresh = await fault.create(image=SMALL_IMAGE)
    await assert_succeeded_once(fault, fresh, 1)


async def test_s3_down_fails_the_job_after_bounded_retries_and_the_worker_goes_on(
    fault: FaultStack,
) -> None:
    """UPLOAD_ATTEMPTS=2 tries per attempt (with backoff), MAX_ATTEMPTS=3 attempts, each a
    retryable UPLOAD_FAILED that puts the job back to QUEUED; the third one fails it for good."""
    moto = fault.deps.s3
    assert moto is not None
    await fault.spawn(moto.stop)
    try:
        job = await fault.create(image=SMALL_IMAGE)
        failed = await fault.wait_terminal(job.id)
    finally:
        await fault.spawn(moto.start)
        # moto keeps everything in memory: its restart lost the bucket, which the services
        # create only at start-up.
        await asyncio.to_thread(fault.ensure_bucket)
    assert failed.status == FAILED
    assert failed.attempt == 3
    assert failed.error.code == job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED
    assert failed.error.message.startswith("attempts exhausted after 3: ")
    # What failed, and no storage address or path (those go to the worker's log).
    assert failed.error.message == (
        "attempts exhausted after 3: the output could not be stored; "
        "retried while the job has attempts left"
    )
    assert not await fault.output_rows(job.id)
    claims = sorted(r["attempt"] for _, r in fault.worker_records(job.id, "job claimed"))
    assert claims == [1, 2, 3]
    retried = fault.worker_records(job.id, "upload of ")
    assert {r["msg"].split(" failed (attempt ")[1][:6] for _, r in retried} == {"1 of 2"}
    assert len(retried) == 3  # one retry within each attempt, then the attempt failed

    # S3 is back: the workers carry on.
    after = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]
    for job in after:
        await assert_succeeded_once(fault, job, 1)
