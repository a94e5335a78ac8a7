"""job_service dies between committing a change and publishing it."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from media.v1 import notifier_service_pb2
from services.common.lifecycle import SUCCEEDED
from tests.faults.helpers import (
    SMALL_IMAGE,
    WAIT_SECONDS,
    FaultStack,
    eventually,
)

pytestmark = pytest.mark.faults

STACK_WORKERS = 2


async def test_a_change_committed_but_not_published_is_delivered_once_after_a_crash(
    fault: FaultStack,
) -> None:
    """Deterministic crash window: nats-server is frozen (SIGSTOP), so no publish can complete;
    CreateJob still succeeds, because it returns once the job and its outbox rows (dispatch and
    status event) are committed. job_service is then SIGKILLed with both rows still in the
    outbox table, nats-server thawed, and job_service started again: its sweep publishes the
    rows. (A PUB the dead process had written into the frozen server's socket may still be
    read by the server when it thaws; it carries the same Nats-Msg-Id as the re-publish, so
    JetStream stores one of the two either way.)

    Exactly once: the dispatch reached one worker once (attempt 1, claimed once, never refused
    as a duplicate), MEDIA_EVENTS holds each version of the job once, and a watcher that was
    following the job sees strictly increasing versions up to SUCCEEDED.
    """
    nats_pid = fault.deps.nats.pid if fault.deps.nats else None
    assert nats_pid is not None
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        job = await fault.create(image=SMALL_IMAGE)
        assert job.version == 1
        # A watcher following the job from now on (its first message is read from job_service,
        # which is still up).
        call = fault.clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=fault.user
        )
        stream = call.__aiter__()
        first = (await asyncio.wait_for(stream.__anext__(), WAIT_SECONDS)).job

        async def rest() -> list:  # type: ignore[type-arg]
            return [message.job async for message in stream]

        watching = asyncio.create_task(rest())
        assert await fault.outbox_rows_of(job.id) == 2  # committed, not published
        fault.services.job_service.kill()
        assert await fault.outbox_rows_of(job.id) == 2
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    await fault.spawn(fault.services.job_service.start)

    seen = [first, *await asyncio.wait_for(watching, WAIT_SECONDS)]
    versions = [j.version for j in seen]
    assert versions == sorted(set(versions)), versions
    assert seen[-1].status == SUCCEEDED, seen[-1].error
    done = await fault.get(job.id)
    assert done.status == SUCCEEDED and done.attempt == 1
    assert seen[-1].version == done.version

    # Every version published once: 1 (QUEUED), 2 (RUNNING), ..., the final one.
    published = await fault.published_events(job.id)
    assert [j.version for j in published] == list(range(1, done.version + 1))
    assert len([r for _, r in fault.worker_records(job.id, "job claimed")]) == 1
    assert not fault.worker_records(job.id, "job not runnable")

    async def settled() -> bool:
        return await fault.consumer_pending("image") == (0, 0)

    await eventually(settled, "the dispatch message to be acked")

    async def drained() -> bool:
        return await fault.outbox_size() == 0

    await eventually(drained, "the outbox to be empty")
