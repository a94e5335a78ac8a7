"""Canceling, and attempts that run out.

One worker, whose progress reports are switched off (PROGRESS_INTERVAL_SECONDS very long): a
refused ReportProgress can then not be what stops a canceled job, only the worker listening to
the job's status events can (services/media_worker/cancellation.py).
"""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from media.v1 import job_pb2, worker_service_pb2
from services.common.lifecycle import CANCELED, FAILED, RUNNING
from tests.faults.helpers import (
    LONG_VIDEO,
    SMALL_IMAGE,
    FaultStack,
    eventually,
)

pytestmark = pytest.mark.faults

STACK_WORKERS = 1
STACK_ENV = {"PROGRESS_INTERVAL_SECONDS": "3600"}


async def test_a_running_job_that_is_canceled_stops_at_once_and_records_nothing(
    fault: FaultStack,
) -> None:
    job = await fault.create(video=job_pb2.VideoParams(prompt="stop me", number_of_videos=4))
    # RUNNING is the claim; the worker starts generating right after it (it takes a while:
    # four 8-second videos).
    await fault.wait_for(job.id, lambda j: j.status == RUNNING, "the claim")
    canceled = await fault.cancel(job.id)
    assert canceled.status == CANCELED

    async def gave_up():  # type: ignore[no-untyped-def]
        return [
            record
            for _, record in fault.worker_records(job.id, "job canceled or superseded")
            if record["msg"].endswith("; acking")
        ]

    await eventually(gave_up, "the worker to drop the canceled job")
    [(_, heard)] = fault.worker_records(job.id, "stop signal received")
    assert "canceled" in heard["msg"]
    # It stopped while generating: the generator never finished, nothing was uploaded.
    assert not fault.worker_records(job.id, "generated ")
    assert not fault.worker_records(job.id, "output stored")
    assert not await fault.objects(f"jobs/{job.id}/")
    assert not await fault.output_rows(job.id)

    async def settled() -> bool:
        return await fault.consumer_pending("video") == (0, 0)

    await eventually(settled, "the dispatch message to be acked")
    final = await fault.get(job.id)
    assert final.status == CANCELED and final.attempt == 1 and not final.outputs
    assert final.version == canceled.version  # nothing moved it after the cancel
    # The result the worker could no longer send is refused.
    late = worker_service_pb2.CompleteJobRequest(
        job_id=job.id,
        attempt=1,
        success=worker_service_pb2.JobSuccess(
            outputs=[
                job_pb2.Output(
                    index=0,
                    bucket="media",
                    key=f"jobs/{job.id}/1/output-0.mp4",
                    content_type="video/mp4",
                    byte_size=1,
                    width=1280,
                    height=720,
                    sha256="00" * 32,
                )
            ],
            model="local",
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fault.clients.workers.CompleteJob(late, metadata=fault.clients.worker)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not await fault.output_rows(job.id)
    # The worker is free again.
    after = await fault.create(image=SMALL_IMAGE)
    assert (await fault.wait_terminal(after.id)).status == job_pb2.JOB_STATUS_SUCCEEDED


async def test_retries_are_bounded_when_the_worker_keeps_dying(fault: FaultStack) -> None:
    """MAX_ATTEMPTS=3: the worker is SIGKILLed in each of the three attempts (and restarted);
    the fourth delivery finds the attempts used up and the job FAILED, naming the cause."""
    worker = fault.services.workers[0]
    job = await fault.create(video=LONG_VIDEO)
    for attempt in (1, 2, 3):
        await fault.wait_for(
            job.id,
            lambda j, a=attempt: j.status == RUNNING and j.attempt == a,
            f"attempt {attempt}",
        )
        worker.kill()
        await fault.spawn(worker.start)
    failed = await fault.wait_terminal(job.id)
    assert failed.status == FAILED
    assert failed.attempt == 3
    assert failed.error.code == job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED
    assert "attempts exhausted after 3" in failed.error.message
    assert "the worker stopped without reporting" in failed.error.message
    assert not await fault.output_rows(job.id)
    # The worker carries on with other work.
    after = await fault.create(image=SMALL_IMAGE)
    assert (await fault.wait_terminal(after.id)).status == job_pb2.JOB_STATUS_SUCCEEDED


async def test_a_queued_job_that_is_canceled_is_never_started(fault: FaultStack) -> None:
    """The worker is frozen while the job is created and canceled; thawed, it receives the
    dispatch, is refused the claim and drops the message (tests/e2e/test_lifecycle.py checks the
    same from the outside)."""
    worker = fault.services.workers[0]
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        job = await fault.create(image=SMALL_IMAGE)
        assert (await fault.cancel(job.id)).status == CANCELED
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    async def dropped():  # type: ignore[no-untyped-def]
        return fault.worker_records(job.id, "job not runnable")

    await eventually(dropped, "the worker to drop the canceled job's dispatch")
    assert not fault.worker_records(job.id, "job claimed")

    async def settled() -> bool:
        return await fault.consumer_pending("image") == (0, 0)

    await eventually(settled, "the dispatch message to be acked")
    final = await fault.get(job.id)
    assert final.status == CANCELED and final.attempt == 0
    assert not await fault.objects(f"jobs/{job.id}/")
