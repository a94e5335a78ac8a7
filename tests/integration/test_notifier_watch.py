"""WatchJob against a real nats-server with JetStream, with a small fake JobService standing in
for job_service's GetJob (the one boundary the notifier calls)."""

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
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import jetstream
from services.common.config import ServerSettings
from services.common.errors import field_violations
from services.common.ids import uuid7
from services.common.server import ServiceHost
from services.notifier.hub import EventHub
from services.notifier.jobs import JobReader, job_service_channel
from services.notifier.servicer import SERVICE_NAME, NotifierService
from tests.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

# A generous bound so that a broken notifier fails the test instead of hanging it; never a
# statement about how fast anything should be.
SAFETY_TIMEOUT = 60.0
ALICE = "Bearer alice-token"
BOB = "Bearer bob-token"
TOKENS = {ALICE: "alice", BOB: "bob"}
SUCCEEDED = job_pb2.JOB_STATUS_SUCCEEDED
RUNNING = job_pb2.JOB_STATUS_RUNNING
QUEUED = job_pb2.JOB_STATUS_QUEUED


class FakeJobService(job_service_pb2_grpc.JobServiceServicer):
    """GetJob only: checks the forwarded authorization like job_service and answers with the
    job's state at the moment of the call, with a URL on outputs once it succeeded."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, job_pb2.Job]] = {}
        self.calls = 0
        self.authorizations: list[str] = []
        self._hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    def hold_next_call(self) -> asyncio.Event:
        """The next GetJob reads its state, then waits for the returned event before answering."""
        self._hold = asyncio.Event()
        self.held.clear()
        return self._hold

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> job_service_pb2.GetJobResponse:
        self.calls += 1
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        self.authorizations.append(str(authorization))
        owner = TOKENS.get(str(authorization))
        if owner is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token: fake says no")
        entry = self.jobs.get(request.job_id)
        if entry is None or entry[0] != owner:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        job = job_pb2.Job()
        job.CopyFrom(entry[1])
        if self._hold is not None:
            hold, self._hold = self._hold, None
            self.held.set()
            await hold.wait()
        for output in job.outputs:
            output.url = f"https://s3.example.invalid/{output.key}?signature=fresh"
        return job_service_pb2.GetJobResponse(job=job)


@dataclass
class ScriptedJob:
    """Plays job_service for one job: change the state, then publish the event (outbox order)."""

    fake: FakeJobService
    js: JetStreamContext
    job: job_pb2.Job
    owner: str

    @classmethod
    def create(
        cls, fake: FakeJobService, js: JetStreamContext, owner: str = "alice"
    ) -> ScriptedJob:
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
        payload = events_pb2.JobEvent(job=job).SerializeToString()
        async with asyncio.timeout(SAFETY_TIMEOUT):
            while True:
                try:
                    await self.js.publish(
                        jetstream.event_subject(job.id),
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
    servicer: NotifierService
    stub: notifier_service_pb2_grpc.NotifierServiceStub


@contextlib.asynccontextmanager
async def running_notifier(
    nats_url: str, job_service_addr: str, *, queue_size: int = 64
) -> AsyncIterator[Notifier]:
    nc = await jetstream.connect(nats_url, "notifier-test")
    channel = job_service_channel(job_service_addr, 4 * 1024 * 1024)
    hub = EventHub(nc.jetstream(), watcher_queue_size=queue_size, idle_heartbeat_seconds=0.5)
    await hub.start()
    servicer = NotifierService(hub, JobReader(channel, timeout_seconds=5))
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
        yield Notifier(hub, servicer, notifier_service_pb2_grpc.NotifierServiceStub(client))
    finally:
        await client.close()
        hub.close()
        await host.stop()
        await hub.stop()
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
async def fake_jobs() -> AsyncIterator[tuple[FakeJobService, str]]:
    fake = FakeJobService()
    server = grpc.aio.server()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(fake, server)
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
    nats_server: NatsServer, fake_jobs: tuple[FakeJobService, str]
) -> AsyncIterator[Notifier]:
    async with running_notifier(nats_server.url, fake_jobs[1]) as running:
        yield running


@pytest.fixture
def fake(fake_jobs: tuple[FakeJobService, str]) -> FakeJobService:
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
    """Every remaining message until the stream ends (OK, or raising its error)."""
    jobs: list[job_pb2.Job] = []
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while (message := await call.read()) is not grpc.aio.EOF:
            jobs.append(message.job)
    return jobs


async def failure(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rest(call)
    return caught.value


async def test_snapshot_then_every_change_in_order_then_the_end(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
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
    assert fake.calls - calls_before == 2
    assert set(fake.authorizations[-2:]) == {ALICE}  # forwarded unchanged


async def test_an_upper_case_job_id_is_watched_as_the_canonical_one(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    call = watch(notifier, job.job.id.upper())
    assert (await next_job(call)).id == job.job.id
    await job.change(SUCCEEDED, 100)
    assert [j.version for j in await rest(call)] == [2]


async def test_job_already_finished_sends_one_message(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    job.advance(SUCCEEDED, 100)
    jobs = await rest(watch(notifier, job.job.id))
    assert [(j.status, j.version) for j in jobs] == [(SUCCEEDED, 2)]
    assert jobs[0].outputs[0].url


async def test_many_watchers_each_see_every_event(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    calls = [watch(notifier, job.job.id) for _ in range(5)]
    for call in calls:
        assert (await next_job(call)).version == 1  # each one is registered from here on
    await job.change(RUNNING)
    await job.change(RUNNING, 50)
    await job.change(SUCCEEDED, 100)
    results = await asyncio.gather(*(rest(call) for call in calls))
    for jobs in results:
        assert [(j.version, j.status) for j in jobs] == [(2, RUNNING), (3, RUNNING), (4, SUCCEEDED)]
    assert notifier.servicer.active_streams == 0
    assert notifier.hub.watcher_count == 0


async def test_duplicate_and_older_versions_are_skipped(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
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
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher, owner="alice")
    error = await failure(watch(notifier, job.job.id, authorization=BOB))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"job {job.job.id} not found"
    assert notifier.hub.watcher_count == 0


async def test_a_bad_token_is_passed_through_as_unauthenticated(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    error = await failure(watch(notifier, job.job.id, authorization="Bearer forged"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid token: fake says no"


async def test_missing_authorization_never_reaches_job_service(
    notifier: Notifier, fake: FakeJobService, publisher: JetStreamContext
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


async def test_a_lagging_watcher_resyncs_and_still_gets_the_terminal_state(
    nats_server: NatsServer,
    fake: FakeJobService,
    fake_jobs: tuple[FakeJobService, str],
    publisher: JetStreamContext,
) -> None:
    async with running_notifier(nats_server.url, fake_jobs[1], queue_size=2) as small:
        job = ScriptedJob.create(fake, publisher)
        release = fake.hold_next_call()
        call = watch(small, job.job.id)
        reading = asyncio.create_task(rest(call))
        async with asyncio.timeout(SAFETY_TIMEOUT):
            await fake.held.wait()  # registered with the hub; its first read saw version 1
        with small.hub.watch(job.job.id, limit=100) as probe:
            await job.change(RUNNING)
            for progress in (20, 40, 60):
                await job.change(RUNNING, progress)
            last = await job.change(SUCCEEDED, 100)
            # When the probe has the last event, the hub has offered all of them to the
            # watcher too, whose reader is still stuck in its first GetJob: it has lagged.
            async with asyncio.timeout(SAFETY_TIMEOUT):
                while await probe.next() != last:
                    pass
        release.set()
        jobs = await reading
    assert [(j.version, j.status) for j in jobs] == [(1, QUEUED), (6, SUCCEEDED)]
    assert jobs[-1].outputs[0].url
    assert small.hub.lagged_total == 1


async def test_job_service_unreachable_is_unavailable(
    nats_server: NatsServer, fake: FakeJobService, publisher: JetStreamContext
) -> None:
    job = ScriptedJob.create(fake, publisher)
    async with running_notifier(nats_server.url, f"127.0.0.1:{free_port()}") as orphan:
        error = await failure(watch(orphan, job.job.id))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_shutdown_ends_open_watches_with_unavailable(
    nats_server: NatsServer,
    fake: FakeJobService,
    fake_jobs: tuple[FakeJobService, str],
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
    tmp_path: Path, fake: FakeJobService, fake_jobs: tuple[FakeJobService, str]
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
    tmp_path: Path, fake: FakeJobService
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
        hub = EventHub(hub_nc.jetstream(), watcher_queue_size=8, idle_heartbeat_seconds=0.5)
        await hub.start()
        try:
            with hub.watch(job.job.id) as watcher:
                await server.stop()
                await server.start()
                new = await job.change(RUNNING, 50)
                # The recreated consumer delivers in stream order, so a replay would come first.
                async with asyncio.timeout(SAFETY_TIMEOUT):
                    assert await watcher.next() == new
        finally:
            await hub.stop()
            await hub_nc.close()
        await nc.close()
    finally:
        await server.stop()
