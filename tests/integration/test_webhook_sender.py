"""The webhook sender against a real nats-server with JetStream, a database of its own on the
session's Postgres (migrated, endpoint rows written with SQL as job_service would) and a real HTTP
receiver. A small JobReaderService stands in for job_service's reads (the one boundary the sender
calls besides those); signatures are verified with the reference implementation."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import nats
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client
from prometheus_client import REGISTRY
from sqlalchemy import Engine, create_engine, text

from devstack.deps import Dependencies
from media.v1 import events_pb2, job_pb2, job_reader_service_pb2, job_reader_service_pb2_grpc
from services.common import jetstream, webhook_signing
from services.common.auth import WEBHOOKS_ROLE, mint_token
from services.common.config import ServerSettings
from services.common.ids import uuid7
from services.common.sealing import Sealer
from services.common.server import ServiceHost
from services.common.webhook_urls import UrlPolicy
from services.job_service import migrate
from services.webhooks.app import WebhookSender
from services.webhooks.delivery_store import Event, Match
from services.webhooks.dispatcher import READ_FAILED, SECRET_UNSEALABLE
from services.webhooks.http import Answer, Sender
from services.webhooks.settings import WebhookSettings
from tests.receivers import Receiver
from tests.servers import NatsServer

pytestmark = pytest.mark.integration

T = TypeVar("T")
WAIT_SECONDS = 60.0  # hang guard only
SECRET = "integration-secret-" + "x" * 20
TOKEN = mint_token(SECRET, "webhooks", roles=(WEBHOOKS_ROLE,))
SEALER = Sealer([Sealer.new_key()])  # secrets are stored sealed, as job_service stores them
PENDING, SUCCEEDED, FAILED = 1, 2, 3
HEAD_BYTES = 16


class FakeJobReader(job_reader_service_pb2_grpc.JobReaderServiceServicer):
    """ReadJobs as job_service answers it: the jobs it knows, outputs with a fresh URL."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, job_pb2.Job]] = {}
        self.fail = False

    async def ReadJobs(
        self,
        request: job_reader_service_pb2.ReadJobsRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> job_reader_service_pb2.ReadJobsResponse:
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        if self.fail or authorization != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "webhooks credential only")
        found = []
        for job_id in request.job_ids:
            if job_id in self.jobs:
                owner, stored = self.jobs[job_id]
                job = job_pb2.Job()
                job.CopyFrom(stored)
                for output in job.outputs:
                    output.url = f"https://s3.example.invalid/{output.key}?fresh"
                found.append(job_reader_service_pb2.OwnedJob(owner=owner, job=job))
        return job_reader_service_pb2.ReadJobsResponse(jobs=found)


@dataclass
class Rig:
    engine: Engine
    nc: Client
    receiver: Receiver
    reader: FakeJobReader
    sender: WebhookSender

    async def sql(self, query: str, **params: Any) -> list[Any]:
        def run() -> list[Any]:
            with self.engine.begin() as conn:
                result = conn.execute(text(query), params)
                return list(result.all()) if result.returns_rows else []

        return await asyncio.to_thread(run)

    async def endpoint(
        self,
        owner: str,
        path: str,
        event_types: tuple[str, ...] = ("job.failed",),
        *,
        kinds: tuple[int, ...] = (),
        job_id: str | None = None,
        enabled: bool = True,
        previous: tuple[str, datetime] | None = None,
    ) -> tuple[uuid.UUID, str]:
        endpoint_id, secret = uuid7(), webhook_signing.new_secret()
        await self.sql(
            "INSERT INTO webhook_endpoints (id, owner, url, event_types, kinds, job_id, secret, "
            "previous_secret, previous_secret_expires_at, enabled) VALUES (:id, :owner, :url, "
            ":types, :kinds, :job_id, :secret, :previous, :expires, :enabled)",
            id=endpoint_id,
            owner=owner,
            url=self.receiver.url(path),
            types=list(event_types),
            kinds=list(kinds),
            job_id=uuid.UUID(job_id) if job_id else None,
            secret=SEALER.seal(secret),
            previous=SEALER.seal(previous[0]) if previous else None,
            expires=previous[1] if previous else None,
            enabled=enabled,
        )
        return endpoint_id, secret

    async def publish(
        self, owner: str, job: job_pb2.Job, event_type: str, event_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        event_id = event_id or uuid7()
        event = events_pb2.JobEvent(job=job, owner=owner, type=event_type)
        await self.nc.jetstream().publish(
            jetstream.event_subject(owner, job.id),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": str(event_id)},
        )
        return event_id

    async def deliveries(self, endpoint_id: uuid.UUID) -> list[Any]:
        return await self.sql(
            "SELECT id, state, attempts, manual, event_type, job_version FROM webhook_deliveries "
            "WHERE endpoint_id = :id ORDER BY id",
            id=endpoint_id,
        )

    async def attempts(self, delivery_id: str) -> list[Any]:
        return await self.sql(
            "SELECT number, status_code, error, response_head, manual FROM webhook_attempts "
            "WHERE delivery_id = :id ORDER BY number",
            id=uuid.UUID(delivery_id),
        )

    async def endpoint_row(self, endpoint_id: uuid.UUID) -> Any:
        rows = await self.sql(
            "SELECT enabled, disabled_reason, disabled_at, failing_since FROM webhook_endpoints "
            "WHERE id = :id",
            id=endpoint_id,
        )
        return rows[0]


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def settings_for(
    database_url: str, nats_url: str, reader_addr: str, **overrides: Any
) -> WebhookSettings:
    base: dict[str, Any] = {
        "database_url": database_url,
        "db_pool_size": 4,
        "db_call_timeout_seconds": 5.0,
        "nats_url": nats_url,
        "job_service_addr": reader_addr,
        "token": TOKEN,
        "server": ServerSettings(
            listen_addr="127.0.0.1:0",
            max_message_bytes=4 * 1024 * 1024,
            blocking_threads=4,
            shutdown_grace_seconds=2.0,
        ),
        "url_policy": UrlPolicy(allow_http=True, allow_private=True),
        "sealer": SEALER,
        "timeout_seconds": 10.0,
        "retry_schedule": (0.2, 0.2),
        "retry_jitter": 0.1,
        "disable_after_seconds": 3600.0,
        "max_in_flight": 16,
        "max_in_flight_per_endpoint": 2,
        "max_in_flight_per_user": 4,
        "response_max_bytes": HEAD_BYTES,
        "poll_seconds": 0.1,
        "events_retention_seconds": 3600.0,
    }
    return WebhookSettings(**{**base, **overrides})


@pytest_asyncio.fixture(scope="module")
async def rig(deps: Dependencies, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    nats_server = NatsServer(tmp_path_factory.mktemp("webhooks-nats"))
    await nats_server.start()
    url = await asyncio.to_thread(deps.create_database, f"webhooks_{os.urandom(4).hex()}")
    await asyncio.to_thread(migrate.upgrade, url)
    reader = FakeJobReader()
    host = ServiceHost("reader", settings_for(url, "", "").server)
    host.add(
        "media.v1.JobReaderService",
        job_reader_service_pb2_grpc.add_JobReaderServiceServicer_to_server,
        reader,
    )
    port = await host.start()
    receiver = await Receiver().start()
    sender = WebhookSender(settings_for(url, nats_server.url, f"127.0.0.1:{port}"))
    await sender.start()
    nc = await nats.connect(nats_server.url)
    engine = create_engine(url)
    try:
        yield Rig(engine, nc, receiver, reader, sender)
    finally:
        await sender.stop()
        await nc.close()
        await receiver.stop()
        await host.stop()
        engine.dispose()
        await nats_server.stop()


def a_job(
    status: int = job_pb2.JOB_STATUS_FAILED, kind: int = job_pb2.MEDIA_KIND_IMAGE
) -> job_pb2.Job:
    changed = Timestamp()
    changed.GetCurrentTime()
    return job_pb2.Job(
        id=str(uuid7()),
        kind=kind,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        version=3,
        update_time=changed,
        create_time=changed,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- fan-out --------------------------------------------------------------------------------


async def test_an_event_reaches_exactly_the_endpoints_that_match(rig: Rig) -> None:
    owner = f"alice-{uuid7()}"
    job = a_job()
    wanted, wanted_secret = await rig.endpoint(
        owner, "/fanout/all", ("job.failed", "job.succeeded")
    )
    await rig.endpoint(owner, "/fanout/other-type", ("job.succeeded",))
    await rig.endpoint(owner, "/fanout/other-kind", kinds=(job_pb2.MEDIA_KIND_VIDEO,))
    await rig.endpoint(f"bob-{uuid7()}", "/fanout/bob")
    await rig.endpoint(owner, "/fanout/disabled", enabled=False)
    one_off, one_off_secret = await rig.endpoint(owner, "/fanout/one-off", job_id=job.id)
    await rig.endpoint(owner, "/fanout/other-job", job_id=str(uuid7()))
    of_kind, of_kind_secret = await rig.endpoint(
        owner, "/fanout/image", kinds=(job_pb2.MEDIA_KIND_IMAGE,)
    )

    await rig.publish(owner, job, "job.failed")

    for path, endpoint_id, secret in (
        ("/fanout/all", wanted, wanted_secret),
        ("/fanout/one-off", one_off, one_off_secret),
        ("/fanout/image", of_kind, of_kind_secret),
    ):
        [received] = await rig.receiver.wait_for(path, 1)
        document = received.verify(secret)
        assert document["type"] == "job.failed"
        assert document["timestamp"] == job.update_time.ToJsonString()
        assert document["data"]["id"] == job.id
        assert document["data"]["status"] == "JOB_STATUS_FAILED"
        assert document["data"]["version"] == 3
        assert received.headers["content-type"] == "application/json"
        assert received.headers["user-agent"] == "media-pipeline-webhooks/1"
        [delivery] = await eventually(
            lambda e=endpoint_id: _ended(rig, e), f"the delivery to {path} recorded"
        )
        assert str(delivery.id) == received.webhook_id
        assert (delivery.state, delivery.attempts, delivery.job_version) == (SUCCEEDED, 1, 3)
        [attempt] = await rig.attempts(received.webhook_id)
        assert (attempt.number, attempt.status_code, attempt.error) == (1, 200, "")
    # The deliveries of one event are inserted together: the others would be there by now.
    rows = await rig.sql(
        "SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = "
        "d.endpoint_id WHERE d.job_id = :job",
        job=uuid.UUID(job.id),
    )
    assert rows[0][0] == 3
    for path in ("/fanout/other-type", "/fanout/other-kind", "/fanout/bob", "/fanout/disabled"):
        assert rig.receiver.at(path) == [], path


async def _ended(rig: Rig, endpoint_id: uuid.UUID) -> list[Any] | None:
    rows = await rig.deliveries(endpoint_id)
    return rows if rows and all(r.state != PENDING for r in rows) else None


async def test_an_event_without_a_type_is_skipped(rig: Rig) -> None:
    owner = f"carol-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/untyped", ("job.failed", "job.queued"))
    await rig.publish(owner, a_job(), "")
    typed = a_job()
    await rig.publish(owner, typed, "job.failed")
    [received] = await rig.receiver.wait_for("/untyped", 1)
    assert received.json()["data"]["id"] == typed.id
    assert len(await rig.deliveries(endpoint_id)) == 1


async def test_a_secret_no_key_opens_fails_the_attempt_without_a_request(rig: Rig) -> None:
    # Sealed under a key the sender does not have (WEBHOOK_SECRETS_KEYS changed without it).
    owner = f"dave-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/unopened")
    foreign = Sealer([Sealer.new_key()]).seal(webhook_signing.new_secret())
    await rig.sql(
        "UPDATE webhook_endpoints SET secret = :s WHERE id = :id", s=foreign, id=endpoint_id
    )
    await rig.publish(owner, a_job(), "job.failed")

    async def attempted() -> list[Any] | None:
        found = await rig.deliveries(endpoint_id)
        return (await rig.attempts(str(found[0].id))) or None if found else None

    [attempt, *_] = await eventually(attempted, "an attempt")
    assert (attempt.status_code, attempt.error) == (0, SECRET_UNSEALABLE)
    assert rig.receiver.at("/unopened") == []


async def test_an_event_inserted_twice_makes_one_delivery(rig: Rig) -> None:
    """NATS delivers an event again when a sender died before acking it."""
    owner = f"dave-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/twice")
    job = a_job()
    event = Event(uuid7(), "job.failed", uuid.UUID(job.id), owner, job.kind, 3, b"\x00")
    store = rig.sender.store
    matches = await store.match([event])
    assert [m.endpoint.id for m in matches] == [endpoint_id]
    first = await store.insert([event], matches, [True], lease=3600)
    again = await store.insert([event], [Match(0, matches[0].endpoint)], [True], lease=3600)
    assert len(first) == 1
    assert again == {}
    assert len(await rig.deliveries(endpoint_id)) == 1


async def test_two_replicas_send_each_attempt_once(rig: Rig) -> None:
    """A second sender on the same consumer and tables: each event becomes one delivery per
    endpoint, and every attempt (retries, which either replica may claim, included) is sent
    once; an attempt sent by both would be recorded twice."""
    second = WebhookSender(rig.sender.settings)
    await second.start()
    try:
        owner = f"rita-{uuid7()}"
        paths = [f"/replicas/{n}" for n in range(3)]
        endpoints = [await rig.endpoint(owner, path) for path in paths]
        rig.receiver.answer(paths[0], *[500] * 10)  # ten of its deliveries need a retry
        jobs = [a_job() for _ in range(30)]
        for job in jobs:
            await rig.publish(owner, job, "job.failed")
        for path, (endpoint_id, secret), retries in zip(paths, endpoints, (10, 0, 0), strict=True):
            ended = await eventually(
                lambda e=endpoint_id: _ended(rig, e), f"the deliveries to {path} ended"
            )
            assert len(ended) == len(jobs)
            assert {d.state for d in ended} == {SUCCEEDED}
            assert sum(d.attempts for d in ended) == len(jobs) + retries
            received = rig.receiver.at(path)
            assert len(received) == len(jobs) + retries
            assert {r.webhook_id for r in received} == {str(d.id) for d in ended}
            ids = sorted({r.verify(secret)["data"]["id"] for r in received})
            assert ids == sorted(job.id for job in jobs)
    finally:
        await second.stop()


# --- attempts and their outcomes -----------------------------------------------------------


async def test_failures_are_retried_on_the_schedule_with_one_webhook_id(rig: Rig) -> None:
    owner = f"erin-{uuid7()}"
    endpoint_id, secret = await rig.endpoint(owner, "/flaky")
    rig.receiver.answer("/flaky", 500, 503)
    await rig.publish(owner, a_job(), "job.failed")
    received = await rig.receiver.wait_for("/flaky", 3)
    assert len({r.webhook_id for r in received}) == 1
    for each in received:
        each.verify(secret)
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    assert (delivery.state, delivery.attempts) == (SUCCEEDED, 3)
    attempts = await rig.attempts(received[0].webhook_id)
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 503), (3, 200)]
    assert (await rig.endpoint_row(endpoint_id)).failing_since is None


async def test_an_exhausted_schedule_fails_the_delivery(rig: Rig) -> None:
    owner = f"frank-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/down")
    rig.receiver.answer("/down", 500, 500, 500, body=b"x" * 100)
    before = metric("media_webhook_deliveries_total", outcome="failed", event_type="job.failed")
    await rig.publish(owner, a_job(), "job.failed")
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    assert (delivery.state, delivery.attempts) == (FAILED, 3)
    attempts = await rig.attempts(str(delivery.id))
    assert [a.status_code for a in attempts] == [500, 500, 500]
    assert {a.response_head for a in attempts} == {"x" * HEAD_BYTES}
    endpoint = await rig.endpoint_row(endpoint_id)
    assert endpoint.enabled and endpoint.failing_since is not None
    after = metric("media_webhook_deliveries_total", outcome="failed", event_type="job.failed")
    assert after == before + 1
    assert len(rig.receiver.at("/down")) == 3


async def test_410_disables_the_endpoint_and_nothing_more_is_sent(rig: Rig) -> None:
    owner = f"gina-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/gone")
    rig.receiver.answer("/gone", 410)
    before = metric("media_webhook_endpoints_disabled_total", reason="gone")
    await rig.publish(owner, a_job(), "job.failed")
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    assert delivery.state == FAILED
    endpoint = await rig.endpoint_row(endpoint_id)
    assert not endpoint.enabled
    assert endpoint.disabled_reason == "the endpoint answered 410 Gone"
    assert endpoint.disabled_at is not None
    assert metric("media_webhook_endpoints_disabled_total", reason="gone") == before + 1
    # A later event of the same owner: a marker endpoint shows it went through the fan-out.
    await rig.endpoint(owner, "/gone-marker")
    await rig.publish(owner, a_job(), "job.failed")
    await rig.receiver.wait_for("/gone-marker", 1)
    assert len(await rig.deliveries(endpoint_id)) == 1
    assert len(rig.receiver.at("/gone")) == 1


async def test_redirects_are_not_followed(rig: Rig) -> None:
    owner = f"hank-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/moved")
    rig.receiver.answer("/moved", 302)
    await rig.publish(owner, a_job(), "job.failed")
    await rig.receiver.wait_for("/moved", 2)
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    attempts = await rig.attempts(str(delivery.id))
    assert [a.status_code for a in attempts] == [302, 200]
    assert rig.receiver.at("/redirected") == []


async def test_a_failing_endpoint_is_disabled_after_the_limit(rig: Rig) -> None:
    owner = f"iris-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/failing")
    since = datetime.now(UTC) - timedelta(hours=2)  # past the rig's hour
    await rig.sql(
        "UPDATE webhook_endpoints SET failing_since = :since WHERE id = :id",
        since=since,
        id=endpoint_id,
    )
    rig.receiver.answer("/failing", 500)
    await rig.publish(owner, a_job(), "job.failed")
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    assert (delivery.state, delivery.attempts) == (FAILED, 1)
    endpoint = await rig.endpoint_row(endpoint_id)
    assert not endpoint.enabled
    assert endpoint.disabled_reason == f"failing since {since:%Y-%m-%dT%H:%M:%SZ}"


async def test_a_succeeded_job_carries_fresh_output_urls(rig: Rig) -> None:
    owner = f"jane-{uuid7()}"
    job = a_job(job_pb2.JOB_STATUS_SUCCEEDED)
    job.outputs.add(index=0, bucket="media", key=f"jobs/{job.id}/1/output-0.png")
    rig.reader.jobs[job.id] = (owner, job)
    _, secret = await rig.endpoint(owner, "/succeeded", ("job.succeeded",))
    await rig.publish(owner, job, "job.succeeded")
    [received] = await rig.receiver.wait_for("/succeeded", 1)
    data = received.verify(secret)["data"]
    assert data["status"] == "JOB_STATUS_SUCCEEDED"
    assert [o["url"] for o in data["outputs"]] == [
        f"https://s3.example.invalid/jobs/{job.id}/1/output-0.png?fresh"
    ]


async def test_a_failed_read_of_the_job_is_a_failed_attempt(rig: Rig) -> None:
    owner = f"kate-{uuid7()}"
    job = a_job(job_pb2.JOB_STATUS_SUCCEEDED)
    rig.reader.jobs[job.id] = (owner, job)
    endpoint_id, _ = await rig.endpoint(owner, "/unread", ("job.succeeded",))
    rig.reader.fail = True
    try:
        await rig.publish(owner, job, "job.succeeded")
        [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    finally:
        rig.reader.fail = False
    assert (delivery.state, delivery.attempts) == (FAILED, 3)
    attempts = await rig.attempts(str(delivery.id))
    assert [(a.status_code, a.error) for a in attempts] == [(0, READ_FAILED)] * 3
    assert rig.receiver.at("/unread") == []
    # Not the receiver's fault: its endpoint is not counted as failing.
    assert (await rig.endpoint_row(endpoint_id)).failing_since is None


async def test_during_a_rotation_both_secrets_sign(rig: Rig) -> None:
    owner = f"liam-{uuid7()}"
    old = webhook_signing.new_secret()
    later = datetime.now(UTC) + timedelta(hours=1)
    _, new = await rig.endpoint(owner, "/rotating", previous=(old, later))
    _, newest = await rig.endpoint(
        owner, "/rotated", previous=(old, datetime.now(UTC) - timedelta(seconds=1))
    )
    await rig.publish(owner, a_job(), "job.failed")
    [overlap] = await rig.receiver.wait_for("/rotating", 1)
    overlap.verify(new)
    overlap.verify(old)
    assert len(overlap.headers["webhook-signature"].split(" ")) == 2
    [after] = await rig.receiver.wait_for("/rotated", 1)
    after.verify(newest)
    with pytest.raises(Exception, match="signature"):
        after.verify(old)


async def test_a_manual_redelivery_is_recorded_as_manual(rig: Rig) -> None:
    owner = f"mia-{uuid7()}"
    endpoint_id, _ = await rig.endpoint(owner, "/manual")
    await rig.publish(owner, a_job(), "job.failed")
    [first] = await rig.receiver.wait_for("/manual", 1)
    await eventually(lambda: _ended(rig, endpoint_id), "the delivery ended")
    # What RedeliverWebhook writes.
    redeliver = (
        "UPDATE webhook_deliveries SET state = 1, manual = true, next_attempt_at = now() "
        "WHERE id = :id"
    )
    rig.receiver.answer("/manual", 500)
    await rig.sql(redeliver, id=uuid.UUID(first.webhook_id))
    received = await rig.receiver.wait_for("/manual", 2)
    assert received[1].webhook_id == first.webhook_id
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the redelivery ended")
    # A failed manual attempt of a delivery that had succeeded ends it, with no retry.
    assert (delivery.state, delivery.attempts, delivery.manual) == (FAILED, 1, False)
    attempts = await rig.attempts(first.webhook_id)
    assert [(a.status_code, a.manual) for a in attempts] == [(200, False), (500, True)]
    await rig.sql(redeliver, id=uuid.UUID(first.webhook_id))
    await rig.receiver.wait_for("/manual", 3)
    [delivery] = await eventually(lambda: _ended(rig, endpoint_id), "the redelivery ended")
    assert (delivery.state, delivery.attempts) == (SUCCEEDED, 1)


# --- concurrency and the address guard -----------------------------------------------------


async def test_a_hanging_endpoint_does_not_delay_another(rig: Rig) -> None:
    slow_owner, fast_owner = f"slow-{uuid7()}", f"fast-{uuid7()}"
    release = rig.receiver.hold("/hanging")
    try:
        await rig.endpoint(slow_owner, "/hanging")
        for _ in range(5):
            await rig.publish(slow_owner, a_job(), "job.failed")
        # Its two slots (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT) are taken and held.
        await rig.receiver.wait_for("/hanging", 2)
        await rig.endpoint(fast_owner, "/prompt")
        await rig.publish(fast_owner, a_job(), "job.failed")
        await rig.receiver.wait_for("/prompt", 1)
        # Delivered while the hanging endpoint's other deliveries still wait for its slots.
        assert len(rig.receiver.at("/hanging")) == 2
    finally:
        release.set()
    await rig.receiver.wait_for("/hanging", 5)


async def test_one_users_hanging_endpoints_do_not_hold_back_another_user(rig: Rig) -> None:
    # Eight endpoints of two slots each could hold all sixteen slots (WEBHOOK_MAX_IN_FLIGHT);
    # the user's own limit (WEBHOOK_MAX_IN_FLIGHT_PER_USER, 4 here) leaves the rest to others.
    greedy, other = f"greedy-{uuid7()}", f"other-{uuid7()}"
    release = rig.receiver.hold("/greedy")
    try:
        for _ in range(8):
            await rig.endpoint(greedy, "/greedy")
        for _ in range(2):
            await rig.publish(greedy, a_job(), "job.failed")  # 16 deliveries
        await rig.receiver.wait_for("/greedy", 4)
        await rig.endpoint(other, "/other")
        await rig.publish(other, a_job(), "job.failed")
        await rig.receiver.wait_for("/other", 1)
        assert len(rig.receiver.at("/greedy")) == 4  # held: the user's four slots, no more
    finally:
        release.set()
    await rig.receiver.wait_for("/greedy", 16)


async def post_once(url: str, *, allow_private: bool) -> Answer:
    """One POST by a Sender of its own (the rig's sender allows private addresses)."""
    sender = Sender(
        UrlPolicy(allow_http=True, allow_private=allow_private),
        timeout_seconds=10,
        response_max_bytes=HEAD_BYTES,
        max_connections=4,
    )
    try:
        return await sender.post(url, b"{}", {})
    finally:
        await sender.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_private_addresses_are_refused_before_any_request(rig: Rig, host: str) -> None:
    answer = await post_once(rig.receiver.url("/private", host), allow_private=False)
    assert answer.result.status_code == 0
    assert "private, loopback, link-local or reserved address" in answer.result.error
    assert "127.0.0.1" not in answer.result.error and "::1" not in answer.result.error
    assert rig.receiver.at("/private") == []


async def test_a_host_that_does_not_resolve_is_a_failed_attempt(rig: Rig) -> None:
    answer = await post_once("http://no-such-host.invalid/hook", allow_private=True)
    assert (answer.result.status_code, answer.result.error) == (0, "the host does not resolve")
