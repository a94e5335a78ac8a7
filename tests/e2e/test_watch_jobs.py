"""The notifier's feed (WatchJobs), resume by cursor, authentication first, token expiry,
stream caps and heartbeats, against the real services.

The session stack's workers are frozen while a test moves jobs itself (WorkerService with the
worker token, CancelJob), so every change is one the test made, in an order it knows. Each test
uses users of its own, so the other tests' jobs never show in its feeds.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio

from devstack.deps import Dependencies
from devstack.services import Services, start_services
from media.v1 import (
    job_pb2,
    job_reader_service_pb2,
    job_reader_service_pb2_grpc,
    job_service_pb2,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
    worker_service_pb2,
)
from services.common.auth import NOTIFIER_ROLE, bearer_metadata, mint_token
from tests.conftest import Clients, workers_paused
from tests.e2e.helpers import WAIT_SECONDS, create

pytestmark = pytest.mark.e2e

QUEUED = job_pb2.JOB_STATUS_QUEUED
RUNNING = job_pb2.JOB_STATUS_RUNNING
CANCELED = job_pb2.JOB_STATUS_CANCELED
IMAGE = job_pb2.ImageParams(prompt="feed", size="256x256")
VIDEO = job_pb2.VideoParams(prompt="feed", duration_seconds=4)
Metadata = tuple[tuple[str, str], ...]
Event = tuple[str, int, int]  # (job ID, version, status)


def someone(clients: Clients) -> Metadata:
    """A user of the test's own."""
    return clients.user(f"feed-{secrets.token_hex(4)}")


def feed(clients: Clients, metadata: Metadata, **request: object) -> grpc.aio.UnaryStreamCall:
    return clients.notifier.WatchJobs(
        notifier_service_pb2.WatchJobsRequest(**request),  # type: ignore[arg-type]
        metadata=metadata,
    )


async def read(call: grpc.aio.UnaryStreamCall, *, heartbeats: bool = False):  # type: ignore[no-untyped-def]
    """The next message (heartbeats skipped unless asked for); fails if the stream ends."""
    while True:
        async with asyncio.timeout(WAIT_SECONDS):
            message = await call.read()
        assert message is not grpc.aio.EOF, "the stream ended"
        if heartbeats or message.WhichOneof("event") != "heartbeat":
            return message


async def snapshot(call: grpc.aio.UnaryStreamCall) -> tuple[list[job_pb2.Job], str]:
    """The opening snapshot's jobs, and the cursor of its snapshot_done."""
    jobs = []
    while True:
        message = await read(call)
        if message.WhichOneof("event") == "snapshot_done":
            return jobs, message.cursor
        assert message.WhichOneof("event") == "job", message
        assert message.cursor
        jobs.append(message.job)


async def changes(call: grpc.aio.UnaryStreamCall, count: int) -> tuple[list[Event], str]:
    """The next `count` changes, and the cursor of the last."""
    found: list[Event] = []
    cursor = ""
    for _ in range(count):
        message = await read(call)
        assert message.WhichOneof("event") == "job", message
        found.append((message.job.id, message.job.version, message.job.status))
        cursor = message.cursor
    return found, cursor


async def changes_until(call: grpc.aio.UnaryStreamCall, last: Event) -> list[Event]:
    """Every change up to and including `last`."""
    found: list[Event] = []
    while not found or found[-1] != last:
        found += (await changes(call, 1))[0]
    return found


async def failure(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(WAIT_SECONDS):
            while await call.read() is not grpc.aio.EOF:
                pass
    return caught.value


async def claim(clients: Clients, job_id: str) -> job_pb2.Job:
    response = await clients.workers.ClaimJob(
        worker_service_pb2.ClaimJobRequest(job_id=job_id), metadata=clients.worker
    )
    return response.job


async def progress(clients: Clients, job: job_pb2.Job, percent: int) -> job_pb2.Job:
    response = await clients.workers.ReportProgress(
        worker_service_pb2.ReportProgressRequest(
            job_id=job.id, attempt=job.attempt, progress=percent
        ),
        metadata=clients.worker,
    )
    return response.job


async def cancel(clients: Clients, metadata: Metadata, job_id: str) -> job_pb2.Job:
    response = await clients.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job_id), metadata=metadata
    )
    return response.job


def event(job: job_pb2.Job) -> Event:
    return (job.id, job.version, job.status)


async def test_the_feed_opens_with_unfinished_jobs_then_every_change_in_order(
    clients: Clients, stack: Services
) -> None:
    user = someone(clients)
    other = someone(clients)
    with workers_paused(stack):
        first = await create(clients, user, image=IMAGE)
        second = await create(clients, user, video=VIDEO)
        done = await create(clients, user, image=IMAGE)
        await cancel(clients, user, done.id)  # finished: not in the snapshot
        theirs = await create(clients, other, image=IMAGE)

        call = feed(clients, user)
        opened, _ = await snapshot(call)
        assert [(j.id, j.status) for j in opened] == [(first.id, QUEUED), (second.id, QUEUED)]

        made = [await claim(clients, first.id)]
        await cancel(clients, other, theirs.id)  # another user's change: never in this feed
        made.append(await progress(clients, made[0], 40))
        third = await create(clients, user, image=IMAGE)
        made.append(third)
        made.append(await cancel(clients, user, second.id))
        made.append(await cancel(clients, user, first.id))
        made.append(await cancel(clients, user, third.id))
        seen = await changes_until(call, event(made[-1]))
        # The changes of `done` happened before the feed opened; their events may still have
        # been on their way to the stream then (the outbox publishes just after the commit), and
        # a change before the opening may come after it: nothing else may.
        assert [e for e in seen if e[0] != done.id] == [event(j) for j in made]
        call.cancel()


async def test_filters_keep_only_the_kinds_and_statuses_asked_for(
    clients: Clients, stack: Services
) -> None:
    user = someone(clients)
    with workers_paused(stack):
        videos = feed(clients, user, kinds=[job_pb2.MEDIA_KIND_VIDEO])
        canceled = feed(clients, user, statuses=[CANCELED])
        assert (await snapshot(videos))[0] == []
        assert (await snapshot(canceled))[0] == []
        image = await create(clients, user, image=IMAGE)
        video = await create(clients, user, video=VIDEO)
        running = await claim(clients, video.id)
        end_image = await cancel(clients, user, image.id)
        end_video = await cancel(clients, user, video.id)
        assert (await changes(videos, 3))[0] == [event(video), event(running), event(end_video)]
        assert (await changes(canceled, 2))[0] == [event(end_image), event(end_video)]
        for call in (videos, canceled):
            call.cancel()


async def test_a_resumed_feed_gets_exactly_the_changes_it_missed(
    clients: Clients, stack: Services
) -> None:
    user = someone(clients)
    other = someone(clients)
    with workers_paused(stack):
        jobs = [await create(clients, user, image=IMAGE) for _ in range(3)]
        call = feed(clients, user)
        opened, cursor = await snapshot(call)
        assert [j.id for j in opened] == [j.id for j in jobs]
        running = await claim(clients, jobs[0].id)
        seen, cursor = await changes(call, 1)
        assert seen == [event(running)]
        call.cancel()  # the client goes away ...

        missed = [
            await progress(clients, running, 10),
            await cancel(clients, user, jobs[1].id),
            await create(clients, user, video=VIDEO),
            await progress(clients, running, 20),
        ]
        theirs = await create(clients, other, image=IMAGE)
        await cancel(clients, other, theirs.id)

        resumed = feed(clients, user, cursor=cursor)  # ... and comes back
        seen, _ = await changes(resumed, len(missed))
        assert seen == [event(j) for j in missed]
        # Nothing more was missed and nothing comes twice: the next message is the next change.
        after = await cancel(clients, user, jobs[2].id)
        assert (await changes(resumed, 1))[0] == [event(after)]
        await cancel(clients, user, jobs[0].id)
        await cancel(clients, user, missed[2].id)
        resumed.cancel()


async def test_a_resumed_watch_gets_exactly_the_changes_it_missed(
    clients: Clients, stack: Services
) -> None:
    user = someone(clients)
    with workers_paused(stack):
        job = await create(clients, user, image=IMAGE)
        call = clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=user
        )
        first = await read(call)
        assert event(first.job) == event(job) and first.cursor
        call.cancel()
        running = await claim(clients, job.id)
        halfway = await progress(clients, running, 50)
        resumed = clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id, cursor=first.cursor),
            metadata=user,
        )
        assert [event((await read(resumed)).job) for _ in range(2)] == [
            event(running),
            event(halfway),
        ]
        end = await cancel(clients, user, job.id)
        last = await read(resumed)
        assert event(last.job) == event(end)
        assert await resumed.read() is grpc.aio.EOF  # ends after the finished state
        # A cursor is for its own job only.
        other = await create(clients, user, image=IMAGE)
        error = await failure(
            clients.notifier.WatchJob(
                notifier_service_pb2.WatchJobRequest(job_id=other.id, cursor=first.cursor),
                metadata=user,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        await cancel(clients, user, other.id)


async def test_another_users_job_stays_not_found(clients: Clients, stack: Services) -> None:
    owner, stranger = someone(clients), someone(clients)
    with workers_paused(stack):
        job = await create(clients, owner, image=IMAGE)
        error = await failure(
            clients.notifier.WatchJob(
                notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=stranger
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        await cancel(clients, owner, job.id)


def _bad_tokens(clients: Clients) -> Iterator[tuple[str, Metadata]]:
    yield "none", ()
    yield "not a JWT", bearer_metadata("not-a-jwt")
    yield "expired", bearer_metadata(mint_token(clients.secret, "alice", ttl_seconds=-60))
    yield "wrong audience", bearer_metadata(mint_token(clients.secret, "alice", audience="x"))
    yield "wrong key", bearer_metadata(mint_token("k" * 40, "alice"))


async def test_a_bad_token_is_unauthenticated_whatever_the_request(clients: Clients) -> None:
    requests = [
        ("WatchJob", notifier_service_pb2.WatchJobRequest(job_id="not-a-uuid")),
        ("WatchJob", notifier_service_pb2.WatchJobRequest(job_id="", cursor="!")),
        ("WatchJob", notifier_service_pb2.WatchJobRequest(job_id=str(secrets.token_hex(16)))),
        ("WatchJobs", notifier_service_pb2.WatchJobsRequest(kinds=[9], cursor="nope")),
        ("WatchJobs", notifier_service_pb2.WatchJobsRequest()),
    ]
    for name, metadata in _bad_tokens(clients):
        for method, request in requests:
            error = await failure(getattr(clients.notifier, method)(request, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, method, request)
    # With a good token the same malformed requests are INVALID_ARGUMENT.
    for method, request in requests[:2] + requests[3:4]:
        error = await failure(getattr(clients.notifier, method)(request, metadata=clients.alice))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)


async def test_a_stream_ends_when_its_token_expires_and_resumes_with_a_fresh_one(
    clients: Clients, stack: Services
) -> None:
    subject = f"feed-{secrets.token_hex(4)}"
    fresh = clients.user(subject)
    with workers_paused(stack):
        job = await create(clients, fresh, image=IMAGE)
        # Valid for a few seconds (the verifier's leeway is 5 s; the stream ends at `exp`).
        short = bearer_metadata(mint_token(clients.secret, subject, ttl_seconds=3))
        call = feed(clients, short)
        _, cursor = await snapshot(call)
        error = await failure(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == (
            "token expired; watch again with a fresh token and the last cursor"
        )
        end = await cancel(clients, fresh, job.id)  # while no stream is open
        resumed = feed(clients, fresh, cursor=cursor)
        assert (await changes(resumed, 1))[0] == [event(end)]
        resumed.cancel()


async def test_only_the_notifier_may_read_jobs_from_job_service(
    clients: Clients, stack: Services
) -> None:
    user = someone(clients)
    with workers_paused(stack):
        job = await create(clients, user, image=IMAGE)
        await cancel(clients, user, job.id)
    async with grpc.aio.insecure_channel(stack.worker_service_addr) as channel:
        reader = job_reader_service_pb2_grpc.JobReaderServiceStub(channel)
        request = job_reader_service_pb2.ReadJobsRequest(job_ids=[job.id])
        for metadata in (user, clients.worker):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await reader.ReadJobs(request, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        notifier = bearer_metadata(mint_token(clients.secret, "n", roles=(NOTIFIER_ROLE,)))
        found = await reader.ReadJobs(request, metadata=notifier)
        assert [(o.job.id, o.job.status) for o in found.jobs] == [(job.id, CANCELED)]
        assert found.jobs[0].owner.startswith("feed-")
        listed = await reader.ListActiveJobs(
            job_reader_service_pb2.ListActiveJobsRequest(owner=found.jobs[0].owner),
            metadata=notifier,
        )
        assert list(listed.jobs) == []  # its only job is finished


# --- a notifier with small limits and a short heartbeat, beside the session's -----------------

SMALL_ENV = {
    "NOTIFIER_MAX_STREAMS_PER_USER": "2",
    "NOTIFIER_MAX_STREAMS": "3",
    "NOTIFIER_HEARTBEAT_SECONDS": "1",
}


@pytest.fixture(scope="module")
def small(
    deps: Dependencies, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """job_service and a notifier of their own (no worker) on the session's dependencies."""
    started = start_services(
        tmp_path_factory.mktemp("small-notifier"), deps, secret, workers=0, extra_env=SMALL_ENV
    )
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture
async def small_clients(small: Services, secret: str) -> AsyncIterator[Clients]:
    made = Clients(small, secret)
    try:
        yield made
    finally:
        await made.close()


def open_streams(services: Services) -> float:
    """media_active_watch_streams on the notifier's /metrics."""
    url = f"http://{services.metrics_addrs['notifier']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("media_active_watch_streams "):
                return float(line.split()[1])
    raise AssertionError("media_active_watch_streams not exported")


async def streams_down_to(services: Services, count: int) -> None:
    """Until the notifier counts at most `count` open streams (closing one is asynchronous)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            if await asyncio.to_thread(open_streams, services) <= count:
                return
            await asyncio.sleep(0.05)


async def test_stream_caps_answer_resource_exhausted_naming_the_limit(
    small: Services, small_clients: Clients
) -> None:
    alice, bob, carol = (small_clients.user(f"cap-{n}") for n in ("a", "b", "c"))
    opened = [feed(small_clients, alice), feed(small_clients, alice)]
    for call in opened:
        await snapshot(call)  # open and registered
    error = await failure(feed(small_clients, alice))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "NOTIFIER_MAX_STREAMS_PER_USER" in (error.details() or "")
    # WatchJob counts too.
    job = await create(small_clients, alice, image=IMAGE)
    error = await failure(
        small_clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=alice
        )
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    third = feed(small_clients, bob)
    await snapshot(third)
    error = await failure(feed(small_clients, carol))  # the process is full
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "NOTIFIER_MAX_STREAMS" in (error.details() or "")
    assert "PER_USER" not in (error.details() or "")

    opened[0].cancel()  # a closed stream frees its slot
    await streams_down_to(small, 2)
    again = feed(small_clients, carol)
    assert (await snapshot(again))[0] == []
    for call in (opened[1], third, again):
        call.cancel()
    await streams_down_to(small, 0)


async def test_idle_streams_get_heartbeats_with_a_cursor(
    small: Services, small_clients: Clients, stack: Services
) -> None:
    # The session's workers share NATS and Postgres with this stack: frozen, the job stays QUEUED.
    with workers_paused(stack):
        user = small_clients.user(f"idle-{secrets.token_hex(4)}")
        call = feed(small_clients, user)
        _, cursor = await snapshot(call)
        beat = await read(call, heartbeats=True)
        assert beat.WhichOneof("event") == "heartbeat"
        assert beat.heartbeat.time.seconds > 0 and beat.cursor
        # The job stays QUEUED, and its watch goes idle too.
        job = await create(small_clients, user, image=IMAGE)
        assert (await changes(call, 1))[0] == [event(job)]
        watch = small_clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=user
        )
        assert (await read(watch)).job.id == job.id
        beat = await read(watch, heartbeats=True)
        assert beat.WhichOneof("event") == "heartbeat" and beat.cursor
        end = await cancel(small_clients, user, job.id)
        assert event((await read(watch)).job) == event(end)
        assert await watch.read() is grpc.aio.EOF
        # The feed carries on past its heartbeats, and a heartbeat's cursor resumes after it.
        assert (await changes(call, 1))[0] == [event(end)]
        beat = await read(call, heartbeats=True)
        call.cancel()
        later = await create(small_clients, user, image=IMAGE)
        resumed = feed(small_clients, user, cursor=beat.cursor)
        assert (await changes(resumed, 1))[0] == [event(later)]
        await cancel(small_clients, user, later.id)
        assert cursor
        resumed.cancel()


def test_stubs_name_both_methods() -> None:
    names = notifier_service_pb2.DESCRIPTOR.services_by_name["NotifierService"].methods_by_name
    assert {"WatchJob", "WatchJobs"} <= set(names)
    assert notifier_service_pb2_grpc.NotifierServiceStub
