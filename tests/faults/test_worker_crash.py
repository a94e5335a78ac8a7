"""A worker that dies (SIGKILL) or freezes (SIGSTOP) in the middle of a job.

Two workers; the job is a long video so that the fault lands while it is generating. Which
worker got the job is read from the workers' logs ("job claimed", with the attempt).
"""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest

from media.v1 import job_pb2, worker_service_pb2
from services.common.lifecycle import SUCCEEDED
from tests.faults.helpers import (
    LONG_VIDEO,
    FaultStack,
    eventually,
)

# Long enough to freeze one worker, let another take over, thaw the first and let it react, all
# while the second one is still encoding.
VERY_LONG_VIDEO = job_pb2.VideoParams(
    prompt="a very long take", duration_seconds=8, number_of_videos=4
)

pytestmark = pytest.mark.faults

STACK_WORKERS = 2


async def claimer(fault: FaultStack, job_id: str, attempt: int):  # type: ignore[no-untyped-def]
    async def probe():  # type: ignore[no-untyped-def]
        return fault.claimed_by(job_id, attempt)

    return await eventually(probe, f"a worker claiming attempt {attempt} of {job_id}")


async def assert_outputs_of_attempt(
    fault: FaultStack, job: job_pb2.Job, attempt: int, count: int
) -> None:
    """Exactly `count` outputs are recorded, all from `attempt`, each matching its object."""
    rows = await fault.output_rows(job.id)
    assert [r.idx for r in rows] == list(range(count))
    prefix = f"jobs/{job.id}/{attempt}/"
    assert all(r.key.startswith(prefix) for r in rows), [r.key for r in rows]
    assert [o.key for o in job.outputs] == [r.key for r in rows]
    stored = await fault.objects(prefix)
    assert sorted(stored) == sorted(r.key for r in rows)  # nothing stored beyond what is recorded
    for row in rows:
        assert stored[row.key] == row.byte_size
        assert await fault.object_sha256(row.bucket, row.key) == row.sha256


async def test_a_worker_killed_mid_job_is_replaced_and_outputs_are_recorded_once(
    fault: FaultStack,
) -> None:
    job = await fault.create(video=LONG_VIDEO)
    await fault.wait_generating(job.id, attempt=1)
    victim = await claimer(fault, job.id, 1)
    victim.kill()  # SIGKILL while it encodes: no nak, no CompleteJob, nothing settled
    # As if it had died just after storing its first output: the next attempt deletes that.
    await asyncio.to_thread(
        fault.s3.put_object, Bucket="media", Key=f"jobs/{job.id}/1/output-0.mp4", Body=b"partial"
    )
    try:
        done = await fault.wait_terminal(job.id)
        assert done.status == SUCCEEDED, done.error
        # Redelivered after the lease (ack_wait) and claimed once more, by the other worker.
        assert done.attempt == 2
        survivor = await claimer(fault, job.id, 2)
        assert survivor.name != victim.name
        await assert_outputs_of_attempt(fault, done, 2, LONG_VIDEO.number_of_videos)
        # Whatever the dead attempt uploaded is gone.
        assert not [k for k in await fault.objects(f"jobs/{job.id}/") if "/2/" not in k]

        async def settled() -> bool:
            return await fault.consumer_pending("video") == (0, 0)

        await eventually(settled, "the dispatch message to be acked")
    finally:
        await fault.spawn(victim.start)


async def test_a_frozen_worker_loses_its_lease_and_its_late_result_is_refused(
    fault: FaultStack,
) -> None:
    """SIGSTOP, not death: the worker's in-progress acks stop, JetStream redelivers after
    ack_wait, the other worker claims attempt 2 and finishes. Once thawed, the late worker is
    told its attempt is stale, whichever it reaches first: its job's status events (a newer
    attempt owns the job), a refused ReportProgress or a refused CompleteJob. It must stop and
    record nothing; the stale CompleteJob it could have sent is refused as FAILED_PRECONDITION.
    """
    job = await fault.create(video=LONG_VIDEO)
    await fault.wait_generating(job.id, attempt=1)
    frozen = await claimer(fault, job.id, 1)
    assert frozen.pid is not None
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        done = await fault.wait_terminal(job.id)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert done.status == SUCCEEDED, done.error
    assert done.attempt == 2
    assert (await claimer(fault, job.id, 2)).name != frozen.name

    async def late_worker_gave_up():  # type: ignore[no-untyped-def]
        return [
            record
            for name, record in fault.worker_records(job.id)
            if name == frozen.name
            and record["msg"].startswith(("job canceled or superseded", "CompleteJob refused"))
        ]

    await eventually(late_worker_gave_up, "the thawed worker to give the job up")
    after = await fault.get(job.id)
    assert after.version == done.version  # the late attempt changed nothing
    await assert_outputs_of_attempt(fault, after, 2, LONG_VIDEO.number_of_videos)

    stale = worker_service_pb2.CompleteJobRequest(
        job_id=job.id,
        attempt=1,
        success=worker_service_pb2.JobSuccess(
            outputs=[
                job_pb2.Output(
                    index=i,
                    bucket="media",
                    key=f"jobs/{job.id}/1/output-{i}.mp4",
                    content_type="video/mp4",
                    byte_size=1,
                    width=1280,
                    height=720,
                    sha256="00" * 32,
                )
                for i in range(LONG_VIDEO.number_of_videos)
            ],
            model="local",
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fault.clients.workers.CompleteJob(stale, metadata=fault.clients.worker)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await fault.output_rows(job.id)) == LONG_VIDEO.number_of_videos


async def test_a_stale_worker_leaves_the_message_to_the_attempt_that_took_over(
    fault: FaultStack,
) -> None:
    """JetStream settles a work-queue message by stream sequence, whichever delivery the ack
    comes from: an ack from a superseded worker would remove the message from under the worker
    that took the job over, and if that one then died the job would stay RUNNING forever.

    Worker A is frozen in attempt 1; worker B takes over (attempt 2). A is thawed, learns it is
    stale and gives the job up; the message must still be pending, held by B. B is then
    SIGKILLed: the message comes back and the job still finishes (attempt 3).
    """
    job = await fault.create(video=VERY_LONG_VIDEO)
    await fault.wait_generating(job.id, attempt=1)
    stale = await claimer(fault, job.id, 1)
    assert stale.pid is not None
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        await fault.wait_generating(job.id, attempt=2)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    taker = await claimer(fault, job.id, 2)
    assert taker.name != stale.name

    async def stale_gave_up():  # type: ignore[no-untyped-def]
        return [
            record
            for name, record in fault.worker_records(job.id, "job canceled or superseded")
            if name == stale.name
        ]

    await eventually(stale_gave_up, "the thawed worker to give the job up")
    assert (await fault.get(job.id)).attempt == 2  # B is still at it
    assert await fault.consumer_pending("video") == (0, 1)  # and still holds the message
    taker.kill()
    try:
        done = await fault.wait_terminal(job.id)
    finally:
        await fault.spawn(taker.start)
    assert done.status == SUCCEEDED and done.attempt == 3, done
    await assert_outputs_of_attempt(fault, done, 3, VERY_LONG_VIDEO.number_of_videos)
