"""A feed (WatchJobs) that follows its cursor through a notifier crash and a NATS restart sees
every change of the user's jobs once, in the order the event stream holds them.

The client here does what a real one does: on UNAVAILABLE it watches again with the last cursor
it got. The truth it is held to is the stream itself, read afterwards with the user's filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2
from services.common import jetstream
from services.common.lifecycle import FINISHED
from tests.faults.helpers import SMALL_IMAGE, WAIT_SECONDS, FaultStack

pytestmark = pytest.mark.faults

STACK_WORKERS = 2
Event = tuple[str, int]  # (job ID, version)


class Follower:
    """A feed that reconnects with its last cursor whenever the stream is cut."""

    def __init__(self, fault: FaultStack, user: str) -> None:
        self._fault = fault
        self.user = user
        self.metadata = fault.clients.user(user)
        self.cursor = ""
        self.events: list[Event] = []
        self.finished: set[str] = set()
        self.resumes = 0
        self.opened = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        while True:
            call = self._fault.clients.notifier.WatchJobs(
                notifier_service_pb2.WatchJobsRequest(cursor=self.cursor), metadata=self.metadata
            )
            try:
                async for message in call:
                    self._take(message)
            except grpc.aio.AioRpcError as exc:
                # A notifier going away (or not back yet) is UNAVAILABLE; anything else is a bug.
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            self.resumes += 1
            await asyncio.sleep(0.1)

    def _take(self, message: notifier_service_pb2.WatchJobsResponse) -> None:
        kind = message.WhichOneof("event")
        assert kind != "reset", message  # nothing is older than the retention here
        if kind == "snapshot_done":
            self.opened.set()
        elif kind == "job" and self.opened.is_set():
            self.events.append((message.job.id, message.job.version))
            if message.job.status in FINISHED:
                self.finished.add(message.job.id)
            self._changed.set()
        self.cursor = message.cursor

    async def until_finished(self, job_ids: set[str]) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while not job_ids <= self.finished:
                self._changed.clear()
                await self._changed.wait()


async def stored_events(fault: FaultStack, user: str) -> list[Event]:
    """Every event of the user's jobs in MEDIA_EVENTS, in stream order."""
    jobs = await fault.stored_jobs(jetstream.owner_events(user), wait_seconds=10)
    return [(job.id, job.version) for job in jobs]


async def follow_through(
    fault: FaultStack, user: str, fault_in_the_middle: Callable[[], Awaitable[None]]
) -> Follower:
    follower = Follower(fault, user)
    task = asyncio.create_task(follower.run())
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            await follower.opened.wait()
        owner = fault.clients.user(user)
        create = fault.clients.jobs.CreateJob

        async def make() -> job_pb2.Job:
            request = job_service_pb2.CreateJobRequest(image=SMALL_IMAGE)
            return (await create(request, metadata=owner, timeout=30)).job

        jobs = [await make() for _ in range(4)]
        await fault_in_the_middle()
        jobs += [await make() for _ in range(4)]
        await follower.until_finished({j.id for j in jobs})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return follower


def assert_exact(seen: list[Event], stored: list[Event]) -> None:
    assert len(seen) == len(set(seen)), "a change came twice"
    assert seen == stored
    for job_id in {j for j, _ in stored}:
        versions = [v for j, v in seen if j == job_id]
        assert versions == list(range(1, len(versions) + 1)), (job_id, versions)


async def test_a_feed_follows_its_cursor_through_a_notifier_crash(fault: FaultStack) -> None:
    async def crash_and_restart() -> None:
        await fault.spawn(fault.services.notifier.kill)  # SIGKILL: no goodbye to anyone
        await fault.spawn(fault.services.notifier.start)

    follower = await follow_through(fault, "feed-crash", crash_and_restart)
    assert follower.resumes >= 1  # the stream really was cut
    assert_exact(follower.events, await stored_events(fault, "feed-crash"))


async def test_a_feed_follows_its_cursor_through_a_nats_restart(fault: FaultStack) -> None:
    async def restart_nats() -> None:
        await fault.spawn(fault.deps.stop_nats)
        await fault.spawn(fault.deps.start_nats)

    follower = await follow_through(fault, "feed-nats", restart_nats)
    assert_exact(follower.events, await stored_events(fault, "feed-nats"))
