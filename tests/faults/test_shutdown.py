"""SIGTERM to each service: it stops taking new work, finishes or hands back what is in flight,
and exits 0; nothing is lost.

The stack starts without workers; each test adds the workers it needs, with the shutdown grace
it needs.
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from devstack.services import ServiceProcess
from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2
from services.common.lifecycle import FINISHED, SUCCEEDED
from tests.faults.helpers import (
    LONG_VIDEO,
    SMALL_IMAGE,
    WAIT_SECONDS,
    FaultStack,
    eventually,
)

pytestmark = pytest.mark.faults

STACK_WORKERS = 0
STACK_ENV = {
    "SHUTDOWN_GRACE_SECONDS": "120",
    # 200 creates race the SIGTERM: no cap on calls in flight, beyond which gRPC would refuse
    # them (RESOURCE_EXHAUSTED) before the service sees them, which is not what is tested here.
    "MAX_CONCURRENT_RPCS": "0",
}


async def add_worker(fault: FaultStack, **env: str) -> ServiceProcess:
    added: list[ServiceProcess] = []
    await fault.spawn(lambda: added.append(fault.services.add_worker(env)))
    return added[0]


async def a_worker(fault: FaultStack) -> None:
    if not any(w.running for w in fault.services.workers):
        await add_worker(fault)


async def terminate(proc: ServiceProcess) -> int:
    """SIGTERM, then the exit code (a hang guard SIGKILLs after WAIT_SECONDS: never 0)."""
    assert proc.process is not None
    proc.process.signal(signal.SIGTERM)
    return await exit_code(proc)


async def exit_code(proc: ServiceProcess) -> int:
    assert proc.process is not None
    return await asyncio.to_thread(proc.process.stop, WAIT_SECONDS)  # type: ignore[return-value]


async def test_a_worker_finishes_its_job_takes_no_new_one_and_exits_0(fault: FaultStack) -> None:
    first = await add_worker(fault)
    video = await fault.create(video=LONG_VIDEO)
    await fault.wait_generating(video.id)
    assert first.process is not None
    first.process.signal(signal.SIGTERM)
    # Created while the worker drains: it must not take it.
    image = await fault.create(image=SMALL_IMAGE)
    assert await exit_code(first) == 0

    done = await fault.get(video.id)
    assert done.status == SUCCEEDED and done.attempt == 1, done
    assert [r["attempt"] for _, r in fault.worker_records(video.id, "job claimed")] == [1]
    assert (await fault.get(image.id)).status == job_pb2.JOB_STATUS_QUEUED
    second = await add_worker(fault)
    assert (await fault.wait_terminal(image.id)).status == SUCCEEDED
    [(name, _)] = fault.worker_records(image.id, "job claimed")
    assert name == second.name
    assert await terminate(second) == 0  # an idle worker stops at once, cleanly


async def test_a_worker_out_of_grace_hands_its_job_back_and_exits_0(fault: FaultStack) -> None:
    workers = [
        await add_worker(fault, SHUTDOWN_GRACE_SECONDS="0.5"),
        await add_worker(fault, SHUTDOWN_GRACE_SECONDS="0.5"),
    ]
    video = await fault.create(video=LONG_VIDEO)
    await fault.wait_generating(video.id)
    [(name, _)] = fault.worker_records(video.id, "job claimed")
    leaving = next(w for w in workers if w.name == name)
    assert await terminate(leaving) == 0
    assert fault.worker_records(video.id, "worker stopping, returning job to the queue")

    done = await fault.wait_terminal(video.id)
    assert done.status == SUCCEEDED and done.attempt == 2, done
    [(other, _)] = [(n, r) for n, r in fault.worker_records(video.id, "job claimed") if n != name]
    assert other != name
    rows = await fault.output_rows(video.id)
    assert len(rows) == LONG_VIDEO.number_of_videos
    assert all(r.key.startswith(f"jobs/{video.id}/2/") for r in rows)


async def test_job_service_completes_calls_in_flight_drains_its_outbox_and_exits_0(
    fault: FaultStack,
) -> None:
    """Creates race the SIGTERM: each one either succeeds (then its job exists and runs to
    the end) or is refused with UNAVAILABLE (then it wrote nothing), which clients retry. Calls
    gRPC had accepted but not yet handed to the service are answered UNAVAILABLE while the
    server drains, instead of CANCELLED by its stop."""
    await a_worker(fault)
    user = fault.clients.user("shutdown-creator")
    jobs = fault.clients.jobs
    calls = [
        asyncio.ensure_future(
            jobs.CreateJob(
                job_service_pb2.CreateJobRequest(image=SMALL_IMAGE), metadata=user, timeout=60
            )
        )
        for _ in range(200)
    ]
    # SIGTERM once the first answer is back: the others are on the wire, queued in the server,
    # in a transaction or not sent yet.
    await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    try:
        code = await terminate(fault.services.job_service)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert code == 0
        created = [r.job.id for r in results if not isinstance(r, BaseException)]
        assert created
        for error in results:
            if isinstance(error, BaseException):
                assert isinstance(error, grpc.aio.AioRpcError)
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        # Every call answered OK was committed, and nothing else was.
        stored = await fault.sql("SELECT id FROM jobs WHERE owner = 'shutdown-creator'")
        assert sorted(str(r.id) for r in stored) == sorted(created)
        # Everything committed was published before the exit.
        assert await fault.outbox_size() == 0
    finally:
        await fault.spawn(fault.services.job_service.start)
    for job_id in created:
        done = await fault.wait_for(job_id, lambda j: j.status in FINISHED, "the end", user)
        assert done.status == SUCCEEDED, done.error


async def test_the_notifier_ends_watches_with_unavailable_and_exits_0(fault: FaultStack) -> None:
    await a_worker(fault)
    video = await fault.create(video=LONG_VIDEO)
    await fault.wait_generating(video.id)
    streams = []
    for _ in range(3):
        call = fault.clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=video.id), metadata=fault.user
        )
        stream = call.__aiter__()
        await asyncio.wait_for(stream.__anext__(), WAIT_SECONDS)  # the watch is open
        streams.append(stream)

    async def drain(stream) -> list:  # type: ignore[no-untyped-def, type-arg]
        return [message async for message in stream]

    ending = [asyncio.create_task(drain(s)) for s in streams]
    notifier = fault.services.notifier
    assert notifier is not None
    assert await terminate(notifier) == 0
    for task in ending:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(task, WAIT_SECONDS)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # Watchers come back to a new notifier and see the end.
    await fault.spawn(notifier.start)
    seen = await fault.watch(video.id)
    assert seen[-1].status == SUCCEEDED

    async def settled() -> bool:
        return await fault.consumer_pending("video") == (0, 0)

    await eventually(settled, "the dispatch message to be acked")
