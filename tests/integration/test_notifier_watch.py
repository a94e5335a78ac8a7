"""WatchJob and WatchJobs against a real nats-server with JetStream, with a small fake
JobReaderService standing in for job_service's reads (the one boundary the notifier calls)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from media.v1 import (
    events_pb2,
    job_pb2,
    job_reader_service_pb2,
    job_reader_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import jetstream
from services.common.auth import NOTIFIER_ROLE, TokenVerifier, mint_token
from services.common.config import AuthSettings, ServerSettings
from services.common.errors import field_violations
from services.common.ids import uuid7
from services.common.job_reader import JobReader, job_service_channel
from services.common.server import ServiceHost
from services.notifier.hub import Change, EventHub
from services.notifier.jobs import JobCache
from services.notifier.limits import StreamLimits
from services.notifier.replay import Replayer
from services.notifier.servicer import SERVICE_NAME, NotifierService
from tests.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

# A generous bound so that a broken notifier fails the test instead of hanging it; never a
# statement about how fast anything should be.
SAFETY_TIMEOUT = 60.0
SECRET = "integration-secret-" + "x" * 20
AUTH = AuthSettings(jwt_secret=SECRET, audience="media", issuer="")
ALICE = "Bearer " + mint_token(SECRET, "alice")
BOB = "Bearer " + mint_token(SECRET, "bob")
NOTIFIER_TOKEN = mint_token(SECRET, "notifier", roles=(NOTIFIER_ROLE,))
SUCCEEDED = job_pb2.JOB_STATUS_SUCCEEDED
RUNNING = job_pb2.JOB_STATUS_RUNNING
QUEUED = job_pb2.JOB_STATUS_QUEUED


class FakeJobReader(job_reader_service_pb2_grpc.JobReaderServiceServicer):
    """ReadJobs and ListActiveJobs: checks the notifier's own credential like job_service and
    answers with the jobs' state at the moment of the call, with a URL on outputs."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, job_pb2.Job]] = {}
        self.calls = 0
        self.read_ids: list[list[str]] = []
        self._hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    def hold_next_call(self) -> asyncio.Event:
        """The next ReadJobs reads its state, then waits for the returned event to answer."""
        self._hold = asyncio.Event()
        self.held.clear()
        return self._hold

    async def _check(self, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        self.calls += 1
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        if authorization != f"Bearer {NOTIFIER_TOKEN}":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "notifier credential only")

    async def ReadJobs(
        self,
        request: job_reader_service_pb2.ReadJobsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> job_reader_service_pb2.ReadJobsResponse:
        await self._check(context)
        self.read_ids.append(list(request.job_ids))
        found = []
        for job_id in request.job_ids:
            entry = self.jobs.get(job_id)
            if entry is None:
                continue
            job = job_pb2.Job()
            job.CopyFrom(entry[1])
            for output in job.outputs:
                output.url = f"https://s3.example.invalid/{output.key}?signature=fresh"
            found.append(job_reader_service_pb2.OwnedJob(owner=entry[0], job=job))
        if self._hold is not None:
            hold, self._hold = self._hold, None
            self.held.set()
            await hold.wait()
        return job_reader_service_pb2.ReadJobsResponse(jobs=found)

    async def ListActiveJobs(
        self,
        request: job_reader_service_pb2.ListActiveJobsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> job_reader_service_pb2.ListActiveJobsResponse:
        await self._check(context)
        jobs = [
            job
            for owner, job in self.jobs.values()
            if owner == request.owner
            and job.status in (QUEUED, RUNNING)
            and (not request.kinds or job.kind in request.kinds)
        ]
        return job_reader_service_pb2.ListActiveJobsResponse(jobs=sorted(jobs, key=lambda j: j.id))


@dataclass
class ScriptedJob:
    """Plays job_service for one job: change the state, then publish the event (outbox order)."""

    fake: FakeJobReader
    js: JetStreamContext
    job: job_pb2.Job
    owner: str

    @classmethod
    def create(cls, fake: FakeJobReader, js: JetStreamContext, owner: str = "alice") -> ScriptedJob:
        job = job_pb2.Job(id=str(uuid7()), kind=job_pb2.MEDIA_KIND_IMAGE, status=QUEUED, version=1)
        scripted = cls(fake, js, job, owner)
        fake.jobs[job.id] = (owner, job)
        return scripted

    def advance(self, status: int, progress: int = 0) -> job_pb2.Job:
        nxt = job_pb2.Job()
        nxt.CopyFrom(self.job)
        nxt.status = status  # type: ignore[assignment]
        nxt.progress = progress
        nxt.version += 1
        if status == SUCCEEDED:
            nxt.outputs.add(index=0, bucket="media", key=f"jobs/{nxt.id}/output-0.png")
        self.job = nxt
        self.fake.jobs[nxt.id] = (self.owner, nxt)
        return nxt

    async def publish(self, job: job_pb2.Job, msg_id: str | None = None) -> None:
        """Publishes until JetStream stores it; one Nats-Msg-Id, so a retry is deduplicated."""
        headers = {"Nats-Msg-Id": msg_id or str(uuid.uuid4())}
        payload = events_pb2.JobEvent(job=job, owner=self.owner).SerializeToString()
        async with asyncio.timeout(SAFETY_TIMEOUT):
            while True:
                try:
                    await self.js.publish(
                        jetstream.event_subject(self.owner, job.id),
                        payload,
                        stream=jetstream.EVENTS_STREAM,
                        headers=headers,
                        timeout=1,
                    )
                    return
                except (nats.errors.Error, nats.js.errors.Error):
                    await asyncio.sleep(0.05)  # NATS is restarting: try again

    async def change(self, status: int, progress: int = 0) -> job_pb2.Job:
        job = self.advance(status, progress)
        await self.publish(job)
        return job


@dataclass
class Notifier:
    hub: EventHub
    cache: JobCache
    servicer: NotifierService
    stub: notifier_service_pb2_grpc.NotifierServiceStub


@contextlib.asynccontextmanager
async def running_notifier(
    nats_url: str, job_service_addr: str, *, queue_size: int = 64
) -> AsyncIterator[Notifier]:
    nc = await jetstream.connect(nats_url, "notifier-test")
    channel = job_service_channel(job_service_addr, 4 * 1024 * 1024)
    cache = JobCache(JobReader(channel, NOTIFIER_TOKEN, timeout_seconds=5))
    hub = EventHub(
        nc.jetstream(), queue_size=queue_size, idle_heartbeat_seconds=0.5, observer=cache
    )
    await hub.start()
    servicer = NotifierService(
        hub,
        cache,
        Replayer(nc.jetstream()),
        TokenVerifier(AUTH),
        StreamLimits(per_user=100, total=1000),
        heartbeat_seconds=600,
    )
    host = ServiceHost(
        "notifier",
        ServerSettings(
            listen_addr="127.0.0.1:0",
            max_message_bytes=4 * 1024 * 1024,
            blocking_threads=2,
            shutdown_grace_seconds=1,
        ),
    )
    host.add(
        SERVICE_NAME, notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server, servicer
    )
    port = await host.start()
    client = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Notifier(hub, cache, servicer, notifier_service_pb2_grpc.NotifierServiceStub(client))
    finally:
        await client.close()
        hub.close()
        await host.stop()
        await hub.stop()
        await cache.close()
        await nc.close()
        await channel.close()


@pytest_asyncio.fixture(scope="module")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    await server.start()
    nc = await nats.connect(server.url)
    await jetstream.ensure_streams(nc.jetstream())
    await nc.close()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def fake_jobs() -> AsyncIterator[tuple[FakeJobReader, str]]:
    fake = FakeJobReader()
    server = grpc.aio.server()
    job_reader_service_pb2_grpc.add_JobReaderServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, f"127.0.0.1:{port}"
    await server.stop(None)


@pytest_asyncio.fixture(scope="module")
async def publisher(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await jetstream.connect(nats_server.url, "job-service-test")
    yield nc.jetstream()
    await nc.close()


@pytest_asyncio.fixture(scope="module")
async def notifier(
    nats_server: NatsServer, fake_jobs: tuple[FakeJobReader, str]
) -> AsyncIterator[Notifier]:
    async with running_notifier(nats_server.url, fake_jobs[1]) as running:
        yield running


@pytest.fixture
def fake(fake_jobs: tuple[FakeJobReader, str]) -> FakeJobReader:
    return fake_jobs[0]


def watch(
    notifier: Notifier, job_id: str, authorization: str | None = ALICE
) -> grpc.aio.UnaryStreamCall:
    metadata = (("authorization", authorization),) if authorization else ()
    return notifier.stub.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata
    )


async def next_job(call: grpc.aio.UnaryStreamCall) -> job_pb2.Job:
    async with asyncio.timeout(SAFETY_TIMEOUT):
        message = await call.read()
    assert message is not grpc.aio.EOF, "the watch ended early"
    return message.job


async def rest(call: grpc.aio.UnaryStreamCall) -> list[job_pb2.Job]:
    """Every remaining job message until the stream ends (OK, or raising its error)."""
    jobs: list[job_pb2.Job] = []
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while (message := await call.read()) is not grpc.aio.EOF:
            if message.WhichOneof("event") == "job":
                jobs.append(message.job)
    return jobs


async def failure(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rest(call)
    return caught.value


async def test_snapshot_then_every_change_in_order_then_the_end(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    calls_before = fake.calls
    call = watch(notifier, job.job.id)
    first = await next_job(call)
    assert (first.status, first.version) == (QUEUED, 1)

    await job.change(RUNNING)
    await job.change(RUNNING, 30)
    await job.change(RUNNING, 70)
    await job.change(SUCCEEDED, 100)

    jobs = await rest(call)
    assert [j.version for j in jobs] == [2, 3, 4, 5]
    assert [j.progress for j in jobs] == [0, 30, 70, 100]
    assert [j.status for j in jobs] == [RUNNING, RUNNING, RUNNING, SUCCEEDED]
    # The final message is a fresh read, so it carries presigned URLs the events never have.
    assert jobs[-1].outputs[0].url.endswith("signature=fresh")
    assert await call.code() == grpc.StatusCode.OK
    # One read when the watch opened and one for the final state, with the notifier's own
    # credential (FakeJobReader refuses any other).
    assert fake.calls - calls_before == 2


async def test_an_upper_case_job_id_is_watched_as_the_canonical_one(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    call = watch(notifier, job.job.id.upper())
    assert (await next_job(call)).id == job.job.id
    await job.change(SUCCEEDED, 100)
    assert [j.version for j in await rest(call)] == [2]


async def test_job_already_finished_sends_one_message(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    job.advance(SUCCEEDED, 100)
    jobs = await rest(watch(notifier, job.job.id))
    assert [(j.status, j.version) for j in jobs] == [(SUCCEEDED, 2)]
    assert jobs[0].outputs[0].url


async def test_many_watchers_each_see_every_event_and_share_two_reads(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    calls_before = fake.calls
    calls = [watch(notifier, job.job.id) for _ in range(50)]
    for call in calls:
        assert (await next_job(call)).version == 1  # each one is registered from here on
    await job.change(RUNNING)
    await job.change(RUNNING, 50)
    await job.change(SUCCEEDED, 100)
    results = await asyncio.gather(*(rest(call) for call in calls))
    for jobs in results:
        assert [(j.version, j.status) for j in jobs] == [(2, RUNNING), (3, RUNNING), (4, SUCCEEDED)]
        assert jobs[-1].outputs[0].url.endswith("signature=fresh")
    # However many watchers: the first read and the final read, once each.
    assert fake.calls - calls_before == 2
    assert notifier.servicer.active_streams == 0
    assert notifier.hub.watcher_count == 0
    assert notifier.cache.size == 0  # memory goes back down with the streams


async def test_duplicate_and_older_versions_are_skipped(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    first_state = job.job
    call = watch(notifier, job.job.id)
    assert (await next_job(call)).version == 1
    v2 = await job.change(RUNNING)
    await job.publish(v2)  # a second copy under another message ID gets past JetStream's dedupe
    await job.publish(first_state)  # older than what the watcher already has
    v3 = await job.change(RUNNING, 60)
    await job.publish(v2)
    await job.publish(v3)
    await job.change(SUCCEEDED, 100)
    assert [j.version for j in await rest(call)] == [2, 3, 4]


async def test_another_users_job_is_not_found(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher, owner="alice")
    error = await failure(watch(notifier, job.job.id, authorization=BOB))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"job {job.job.id} not found"
    assert notifier.hub.watcher_count == 0


async def test_a_bad_token_is_unauthenticated_before_anything_is_read(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    calls_before = fake.calls
    forged = "Bearer " + mint_token("another-secret-" + "y" * 20, "alice")
    for job_id in (job.job.id, "not-a-uuid"):
        for token in ("Bearer forged", forged):
            error = await failure(watch(notifier, job_id, authorization=token))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fake.calls == calls_before


async def test_missing_authorization_never_reaches_job_service(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    calls_before = fake.calls
    for authorization in (None, "Basic YWxpY2U6c2VjcmV0", "Bearer "):
        error = await failure(watch(notifier, job.job.id, authorization=authorization))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fake.calls == calls_before


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "not-a-uuid",
        "0190f3a0000070008000000000000001",
        "{0190f3a0-0000-7000-8000-000000000001}",
    ],
)
async def test_invalid_job_id_is_invalid_argument(notifier: Notifier, job_id: str) -> None:
    error = await failure(watch(notifier, job_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(error)] == ["job_id"]


async def newest_known(notifier: Notifier, job_id: str, version: int) -> None:
    """Until the notifier's cache holds `version` of the job (the hub has dealt with it)."""
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while True:
            if (notifier.cache.latest(job_id) or job_pb2.Job()).version >= version:
                return
            await asyncio.sleep(0.01)


async def test_a_lagging_watcher_resyncs_from_the_cache_and_still_gets_the_end(
    nats_server: NatsServer,
    fake: FakeJobReader,
    fake_jobs: tuple[FakeJobReader, str],
    publisher: JetStreamContext,
) -> None:
    async with running_notifier(nats_server.url, fake_jobs[1], queue_size=2) as small:
        job = ScriptedJob.create(fake, publisher)
        release = fake.hold_next_call()
        call = watch(small, job.job.id)
        async with asyncio.timeout(SAFETY_TIMEOUT):
            await fake.held.wait()  # registered with the hub; its first read saw version 1
        await job.change(RUNNING)
        for progress in (20, 40, 60):
            last = await job.change(RUNNING, progress)
        # The hub keeps the held job's newest state: once it is the last event, all of them
        # were offered to the watcher, whose reader is still in its first read: it has lagged.
        await newest_known(small, job.job.id, last.version)
        calls_before = fake.calls
        release.set()
        first = await next_job(call)
        await job.change(SUCCEEDED, 100)
        jobs = [first, *await rest(call)]
    # The newest state at once, then the end; the resync itself needed no read.
    assert [(j.version, j.status) for j in jobs] == [(5, RUNNING), (6, SUCCEEDED)]
    assert jobs[-1].outputs[0].url
    assert small.hub.lagged_total == 1
    assert fake.calls - calls_before == 1  # the final read only


async def test_job_service_unreachable_is_unavailable(
    nats_server: NatsServer, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    async with running_notifier(nats_server.url, f"127.0.0.1:{free_port()}") as orphan:
        error = await failure(watch(orphan, job.job.id))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_shutdown_ends_open_watches_with_unavailable(
    nats_server: NatsServer,
    fake: FakeJobReader,
    fake_jobs: tuple[FakeJobReader, str],
    publisher: JetStreamContext,
) -> None:
    job = ScriptedJob.create(fake, publisher)
    async with running_notifier(nats_server.url, fake_jobs[1]) as closing:
        call = watch(closing, job.job.id)
        assert (await next_job(call)).version == 1
        closing.hub.close()
        error = await failure(call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_nats_restart_loses_no_later_event(
    tmp_path: Path, fake: FakeJobReader, fake_jobs: tuple[FakeJobReader, str]
) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        nc = await jetstream.connect(server.url, "job-service-test")
        js = nc.jetstream()
        await jetstream.ensure_streams(js)
        async with running_notifier(server.url, fake_jobs[1]) as restarted:
            job = ScriptedJob.create(fake, js)
            call = watch(restarted, job.job.id)
            assert (await next_job(call)).version == 1
            await job.change(RUNNING)
            assert (await next_job(call)).version == 2

            await server.stop()
            await server.start()  # same port, same store directory

            await job.change(RUNNING, 50)
            await job.change(RUNNING, 90)
            await job.change(SUCCEEDED, 100)
            jobs = await rest(call)
        await nc.close()
    finally:
        await server.stop()
    assert [(j.version, j.progress) for j in jobs] == [(3, 50), (4, 90), (5, 100)]
    assert jobs[-1].status == SUCCEEDED


async def test_a_nats_restart_before_any_event_replays_nothing_old(
    tmp_path: Path, fake: FakeJobReader
) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        nc = await jetstream.connect(server.url, "job-service-test")
        js = nc.jetstream()
        await jetstream.ensure_streams(js)
        job = ScriptedJob.create(fake, js)
        await job.publish(job.job)
        await job.change(RUNNING)  # both stored before the hub starts
        hub_nc = await jetstream.connect(server.url, "notifier-test")
        hub = EventHub(hub_nc.jetstream(), queue_size=8, idle_heartbeat_seconds=0.5)
        await hub.start()
        try:
            with hub.watch_job(job.job.id) as watcher:
                await server.stop()
                await server.start()
                new = await job.change(RUNNING, 50)
                # The recreated consumer delivers in stream order, so a replay would come first.
                async with asyncio.timeout(SAFETY_TIMEOUT):
                    item = await watcher.next()
                assert isinstance(item, Change) and item.job == new
        finally:
            await hub.stop()
            await hub_nc.close()
        await nc.close()
    finally:
        await server.stop()


# --- WatchJobs ------------------------------------------------------------------------------


def feed(
    notifier: Notifier, authorization: str = ALICE, cursor: str = ""
) -> grpc.aio.UnaryStreamCall:
    return notifier.stub.WatchJobs(
        notifier_service_pb2.WatchJobsRequest(cursor=cursor),
        metadata=(("authorization", authorization),),
    )


async def opening(call: grpc.aio.UnaryStreamCall) -> tuple[list[str], str]:
    """The feed's opening: (IDs of the snapshot's jobs, the cursor of snapshot_done)."""
    ids = []
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF
            if message.WhichOneof("event") == "snapshot_done":
                return ids, message.cursor
            ids.append(message.job.id)


async def feed_changes(
    call: grpc.aio.UnaryStreamCall, count: int
) -> tuple[list[tuple[str, int]], str]:
    found, cursor = [], ""
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while len(found) < count:
            message = await call.read()
            assert message is not grpc.aio.EOF
            if message.WhichOneof("event") == "job":
                found.append((message.job.id, message.job.version))
                cursor = message.cursor
    return found, cursor


async def test_a_feed_resumes_exactly_on_another_replica(
    nats_server: NatsServer,
    fake: FakeJobReader,
    fake_jobs: tuple[FakeJobReader, str],
    publisher: JetStreamContext,
) -> None:
    mine = ScriptedJob.create(fake, publisher)
    theirs = ScriptedJob.create(fake, publisher, owner="bob")
    async with running_notifier(nats_server.url, fake_jobs[1]) as first:
        call = feed(first)
        ids, _ = await opening(call)
        assert mine.job.id in ids and theirs.job.id not in ids
        v2 = await mine.change(RUNNING)
        seen, cursor = await feed_changes(call, 1)
        assert seen == [(mine.job.id, v2.version)]
        call.cancel()
    missed = []
    for progress in (10, 20, 30):
        missed.append(await mine.change(RUNNING, progress))
        await theirs.change(RUNNING, progress)
    later = ScriptedJob.create(fake, publisher)
    missed.append(later.job)
    await later.publish(later.job)
    async with running_notifier(nats_server.url, fake_jobs[1]) as second:
        resumed = feed(second, cursor=cursor)
        seen, _ = await feed_changes(resumed, len(missed))
        assert seen == [(j.id, j.version) for j in missed]
        end = await mine.change(SUCCEEDED, 100)  # the next message is the next change
        seen, _ = await feed_changes(resumed, 1)
        assert seen == [(mine.job.id, end.version)]
        resumed.cancel()


async def test_a_cursor_older_than_the_retention_gets_a_reset_then_the_snapshot(
    tmp_path: Path, fake: FakeJobReader, fake_jobs: tuple[FakeJobReader, str]
) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        nc = await jetstream.connect(server.url, "job-service-test")
        js = nc.jetstream()
        await jetstream.ensure_streams(js)
        job = ScriptedJob.create(fake, js)
        async with running_notifier(server.url, fake_jobs[1]) as running:
            call = feed(running)
            _, cursor = await opening(call)
            call.cancel()
            await job.change(RUNNING)
            await job.change(RUNNING, 50)
            await js.purge_stream(jetstream.EVENTS_STREAM)  # as if they had aged out
            resumed = feed(running, cursor=cursor)
            async with asyncio.timeout(SAFETY_TIMEOUT):
                first = await resumed.read()
            assert first.WhichOneof("event") == "reset"
            assert "retention" in first.reset.reason
            ids, _ = await opening(resumed)
            assert job.job.id in ids
            resumed.cancel()
        await nc.close()
    finally:
        await server.stop()


async def test_a_cursor_of_a_recreated_stream_gets_a_reset(
    tmp_path: Path,
    nats_server: NatsServer,
    fake: FakeJobReader,
    fake_jobs: tuple[FakeJobReader, str],
) -> None:
    async with running_notifier(nats_server.url, fake_jobs[1]) as old:
        call = feed(old)
        _, cursor = await opening(call)
        call.cancel()
    server = NatsServer(tmp_path / "nats")  # another stream: other sequence numbers
    await server.start()
    try:
        nc = await nats.connect(server.url)
        await jetstream.ensure_streams(nc.jetstream())
        await nc.close()
        async with running_notifier(server.url, fake_jobs[1]) as new:
            for message_of in (
                feed(new, cursor=cursor),
                new.stub.WatchJob(
                    notifier_service_pb2.WatchJobRequest(
                        job_id=ScriptedJob.create(fake, new.hub._js).job.id, cursor=cursor
                    ),
                    metadata=(("authorization", ALICE),),
                ),
            ):
                async with asyncio.timeout(SAFETY_TIMEOUT):
                    first = await message_of.read()
                    assert first.WhichOneof("event") == "reset"
                    second = await message_of.read()  # then the state as it is now
                assert second.WhichOneof("event") == "job"
                message_of.cancel()
    finally:
        await server.stop()


async def test_a_feed_that_falls_behind_ends_and_resumes_from_its_cursor(
    nats_server: NatsServer,
    fake: FakeJobReader,
    fake_jobs: tuple[FakeJobReader, str],
    publisher: JetStreamContext,
) -> None:
    async with running_notifier(nats_server.url, fake_jobs[1], queue_size=2) as small:
        done = ScriptedJob.create(fake, publisher)
        busy = ScriptedJob.create(fake, publisher)
        call = feed(small)
        await opening(call)
        release = fake.hold_next_call()
        # A finished job's message waits for its final read (held), while more changes come.
        end = await done.change(SUCCEEDED, 100)
        async with asyncio.timeout(SAFETY_TIMEOUT):
            await fake.held.wait()
        after = [await busy.change(RUNNING, p) for p in (10, 20, 30)]
        await newest_seen(small, after[-1])
        release.set()
        seen, cursor = await feed_changes(call, 1)
        assert seen == [(done.job.id, end.version)]
        error = await failure(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "fell behind; resume with the last cursor"
        resumed = feed(small, cursor=cursor)
        seen, _ = await feed_changes(resumed, len(after))
        assert seen == [(busy.job.id, j.version) for j in after]
        resumed.cancel()


async def newest_seen(notifier: Notifier, job: job_pb2.Job) -> None:
    """Until the notifier's hub has dealt with the event of `job` (its position passed it)."""
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while True:
            info = await notifier.hub._js.stream_info(jetstream.EVENTS_STREAM)
            if notifier.hub.position >= info.state.last_seq:
                return
            await asyncio.sleep(0.01)


async def test_the_snapshot_cursor_is_past_the_events_it_shows(
    notifier: Notifier, fake: FakeJobReader, publisher: JetStreamContext
) -> None:
    """A job listed in the snapshot whose event reaches the stream only afterwards (the outbox
    publishes just after the commit): resuming from snapshot_done must not send it again."""
    job = ScriptedJob.create(fake, publisher, owner="carol")
    job.job.update_time.GetCurrentTime()  # changed just now: its event may still be on its way
    carol = "Bearer " + mint_token(SECRET, "carol")
    call = feed(notifier, carol)
    async with asyncio.timeout(SAFETY_TIMEOUT):
        listed = await call.read()
    assert listed.job.id == job.job.id
    await job.publish(job.job)  # the listed job's event arrives after the listing
    ids, cursor = await opening(call)
    assert ids == []  # (the listed job came first)
    call.cancel()
    v2 = await job.change(RUNNING)
    resumed = feed(notifier, carol, cursor=cursor)
    seen, _ = await feed_changes(resumed, 1)
    assert seen == [(job.job.id, v2.version)]
    resumed.cancel()
