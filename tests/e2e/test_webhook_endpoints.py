"""WebhookService against the running job_service: endpoints created, listed, read, changed,
rotated and deleted with exact answers; the signing secret shown by Create and Rotate alone; every
bad field named; another user's endpoints and deliveries NOT_FOUND; deliveries listed with their
attempts and redelivered; one-off endpoints of CreateJob; and, on a job_service of this module's
own with the default URL policy, private addresses and plain http refused and the endpoint cap.

The session stack allows http and private networks (its receivers listen on loopback), so URLs
here are IP literals: nothing is resolved, nothing is sent (the sender is not what is tested).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
import sqlalchemy as sa

from devstack.deps import Dependencies
from devstack.services import ServiceProcess, Services
from media.v1 import events_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc
from media.v1 import webhook_service_pb2 as pb
from media.v1.webhook_service_pb2_grpc import WebhookServiceStub
from services.common.errors import field_violations
from services.common.ids import uuid7
from services.common.lifecycle import EVENT_TYPES, FINISHED_EVENT_TYPES
from services.job_service.schema import webhook_attempts, webhook_deliveries
from tests.conftest import Clients

pytestmark = pytest.mark.e2e

URL = "http://127.0.0.1:9/hook"  # the session stack allows http and loopback
PUBLIC_URL = "https://93.184.215.14/hook"  # a public literal: allowed everywhere, never resolved
OVERLAP_SECONDS = 86400  # WEBHOOK_SECRET_OVERLAP_SECONDS' default
# Between this machine's clock and Postgres' (the same machine): bounds, not a timing claim.
CLOCK_SLACK = dt.timedelta(seconds=5)
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def hooks(clients: Clients) -> WebhookServiceStub:
    return WebhookServiceStub(clients.job_channel)


def someone(clients: Clients) -> Metadata:
    """A user of the test's own: nobody else's endpoints or jobs in its lists."""
    return clients.user(f"hooks-{uuid.uuid4().hex[:12]}")


async def create(
    hooks: WebhookServiceStub, who: Metadata, **fields: object
) -> pb.CreateWebhookEndpointResponse:
    request = pb.CreateWebhookEndpointRequest(url=str(fields.pop("url", URL)), **fields)  # type: ignore[arg-type]
    response: pb.CreateWebhookEndpointResponse = await hooks.CreateWebhookEndpoint(
        request, metadata=who
    )
    return response


async def refused(call: object, request: object, who: Metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=who)  # type: ignore[operator]
    return caught.value


async def invalid(call: object, request: object, who: Metadata, field: str) -> str:
    """The description of the one violation of `field` a bad request is answered with."""
    error = await refused(call, request, who)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    found = [d for f, d in field_violations(error) if f == field]
    assert found, (field, field_violations(error))
    return found[0]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- CRUD ---------------------------------------------------------------------------------


async def test_an_endpoint_is_created_read_listed_updated_and_deleted(
    clients: Clients, hooks: WebhookServiceStub
) -> None:
    who = someone(clients)
    before = now()
    created = await create(hooks, who, description="builds")
    endpoint = created.endpoint
    assert created.secret.startswith("whsec_") and len(created.secret) > 40
    assert uuid.UUID(endpoint.id).version == 7
    assert endpoint.url == URL
    assert list(endpoint.event_types) == list(FINISHED_EVENT_TYPES)  # the default filter
    assert list(endpoint.kinds) == []
    assert endpoint.description == "builds"
    assert endpoint.enabled and endpoint.disabled_reason == ""
    assert not endpoint.HasField("disable_time")
    assert endpoint.job_id == ""
    assert not endpoint.HasField("previous_secret_expire_time")
    created_at = endpoint.create_time.ToDatetime(dt.UTC)
    assert before - CLOCK_SLACK <= created_at <= now() + CLOCK_SLACK
    assert endpoint.update_time == endpoint.create_time

    got = await hooks.GetWebhookEndpoint(
        pb.GetWebhookEndpointRequest(endpoint_id=endpoint.id), metadata=who
    )
    assert got.endpoint == endpoint

    second = (
        await create(
            hooks,
            who,
            url=PUBLIC_URL,
            event_types=["job.succeeded", "job.queued", "job.succeeded"],
            kinds=[job_pb2.MEDIA_KIND_VIDEO, job_pb2.MEDIA_KIND_IMAGE, job_pb2.MEDIA_KIND_VIDEO],
        )
    ).endpoint
    # Duplicates collapsed, in the lifecycle's order.
    assert list(second.event_types) == ["job.queued", "job.succeeded"]
    assert list(second.kinds) == [job_pb2.MEDIA_KIND_IMAGE, job_pb2.MEDIA_KIND_VIDEO]
    listed = await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=who)
    assert list(listed.endpoints) == [second, endpoint]  # newest first
    assert listed.next_page_token == ""

    update = pb.UpdateWebhookEndpointRequest(
        endpoint_id=endpoint.id,
        update_mask=["description", "event_types", "kinds", "url"],
        description="",
        event_types=list(EVENT_TYPES),
        kinds=[job_pb2.MEDIA_KIND_IMAGE],
        url=PUBLIC_URL,
        enabled=False,  # not in the mask: left as it is
    )
    updated = (await hooks.UpdateWebhookEndpoint(update, metadata=who)).endpoint
    assert updated.url == PUBLIC_URL and updated.description == ""
    assert list(updated.event_types) == list(EVENT_TYPES)
    assert list(updated.kinds) == [job_pb2.MEDIA_KIND_IMAGE]
    assert updated.enabled
    assert updated.create_time == endpoint.create_time
    assert updated.update_time.ToDatetime(dt.UTC) >= created_at
    assert (
        await hooks.GetWebhookEndpoint(
            pb.GetWebhookEndpointRequest(endpoint_id=endpoint.id), metadata=who
        )
    ).endpoint == updated

    await hooks.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id), metadata=who
    )
    error = await refused(
        hooks.GetWebhookEndpoint, pb.GetWebhookEndpointRequest(endpoint_id=endpoint.id), who
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await refused(
        hooks.DeleteWebhookEndpoint, pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id), who
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=who)
    assert list(listed.endpoints) == [second]


async def test_disabling_and_enabling(clients: Clients, hooks: WebhookServiceStub) -> None:
    who = someone(clients)
    endpoint = (await create(hooks, who)).endpoint
    off = pb.UpdateWebhookEndpointRequest(
        endpoint_id=endpoint.id, update_mask=["enabled"], enabled=False
    )
    disabled = (await hooks.UpdateWebhookEndpoint(off, metadata=who)).endpoint
    assert not disabled.enabled
    assert disabled.disabled_reason == "disabled by the owner"
    assert disabled.HasField("disable_time")
    on = pb.UpdateWebhookEndpointRequest(
        endpoint_id=endpoint.id, update_mask=["enabled"], enabled=True
    )
    enabled = (await hooks.UpdateWebhookEndpoint(on, metadata=who)).endpoint
    assert enabled.enabled and enabled.disabled_reason == ""
    assert not enabled.HasField("disable_time")


async def test_pages_of_endpoints(clients: Clients, hooks: WebhookServiceStub) -> None:
    who = someone(clients)
    made = [(await create(hooks, who, description=str(i))).endpoint for i in range(3)]
    first = await hooks.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=2), metadata=who
    )
    assert [e.id for e in first.endpoints] == [made[2].id, made[1].id]
    assert first.next_page_token
    rest = await hooks.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(page_size=2, page_token=first.next_page_token), metadata=who
    )
    assert [e.id for e in rest.endpoints] == [made[0].id]
    assert rest.next_page_token == ""


# --- secrets ------------------------------------------------------------------------------


async def test_the_secret_is_shown_by_create_and_rotate_only(
    clients: Clients, hooks: WebhookServiceStub, stack: Services, deps: Dependencies
) -> None:
    who = someone(clients)
    created = await create(hooks, who)
    endpoint_id = created.endpoint.id
    get = pb.GetWebhookEndpointRequest(endpoint_id=endpoint_id)
    before = now()
    rotated = await hooks.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(endpoint_id=endpoint_id), metadata=who
    )
    after = now()
    assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
    expires = rotated.endpoint.previous_secret_expire_time.ToDatetime(dt.UTC)
    overlap = dt.timedelta(seconds=OVERLAP_SECONDS)
    assert before + overlap - CLOCK_SLACK <= expires <= after + overlap + CLOCK_SLACK
    got = (await hooks.GetWebhookEndpoint(get, metadata=who)).endpoint
    assert got.previous_secret_expire_time == rotated.endpoint.previous_secret_expire_time
    answers = [
        await hooks.GetWebhookEndpoint(get, metadata=who),
        await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=who),
        await hooks.UpdateWebhookEndpoint(
            pb.UpdateWebhookEndpointRequest(
                endpoint_id=endpoint_id, update_mask=["description"], description="x"
            ),
            metadata=who,
        ),
        await hooks.ListWebhookDeliveries(
            pb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id), metadata=who
        ),
    ]
    log = await asyncio.to_thread(stack.job_service.log_path.read_text)
    # At rest too: the row holds both secrets sealed (WEBHOOK_SECRETS_KEYS), neither as issued.
    stored = await asyncio.to_thread(_stored_secrets, deps.database_url, endpoint_id)
    assert len(stored) == 2 and all(s and not s.startswith("whsec_") for s in stored)
    for secret in (created.secret, rotated.secret):
        for answer in answers:
            assert secret.encode() not in answer.SerializeToString(), answer
        assert secret not in log
        assert not any(secret in s for s in stored)


def _stored_secrets(database_url: str, endpoint_id: str) -> tuple[str, str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT secret, previous_secret FROM webhook_endpoints WHERE id = :id"),
                {"id": endpoint_id},
            ).one()
            return row[0], row[1]
    finally:
        engine.dispose()


# --- bad requests -------------------------------------------------------------------------


async def test_each_bad_field_is_named(clients: Clients, hooks: WebhookServiceStub) -> None:
    who = someone(clients)
    create_call = hooks.CreateWebhookEndpoint
    C = pb.CreateWebhookEndpointRequest
    assert "required" in await invalid(create_call, C(), who, "url")
    assert "http" in await invalid(create_call, C(url="ftp://127.0.0.1/x"), who, "url")
    huge = "https://93.184.215.14/" + "a" * 300_000
    assert "2048" in await invalid(create_call, C(url=huge), who, "url")
    creds = "https://user:pw@93.184.215.14/hook"
    assert "credentials" in await invalid(create_call, C(url=creds), who, "url")
    bad_type = C(url=URL, event_types=["job.succeeded", "job.exploded"])
    assert "job.exploded" in await invalid(create_call, bad_type, who, "event_types")
    assert await invalid(create_call, C(url=URL, kinds=[7]), who, "kinds")  # type: ignore[list-item]
    long_text = C(url=URL, description="d" * 501)
    assert "500" in await invalid(create_call, long_text, who, "description")
    huge_text = C(url=URL, description="é" * 300_000)
    assert "500" in await invalid(create_call, huge_text, who, "description")
    nul = C(url=URL, description="a\x00b")
    assert await invalid(create_call, nul, who, "description")

    endpoint = (await create(hooks, who)).endpoint
    U = pb.UpdateWebhookEndpointRequest
    update = hooks.UpdateWebhookEndpoint
    assert await invalid(update, U(endpoint_id=endpoint.id), who, "update_mask")
    assert "'colour'" in await invalid(
        update, U(endpoint_id=endpoint.id, update_mask=["colour"]), who, "update_mask"
    )
    # Naming event_types with none in an update would send nothing: refused.
    empty = U(endpoint_id=endpoint.id, update_mask=["event_types"])
    assert await invalid(update, empty, who, "event_types")
    assert await invalid(
        update, U(endpoint_id=endpoint.id, update_mask=["url"], url="gopher://x"), who, "url"
    )
    assert await invalid(update, U(endpoint_id="nope", update_mask=["enabled"]), who, "endpoint_id")

    ids = [
        (hooks.GetWebhookEndpoint, pb.GetWebhookEndpointRequest(endpoint_id="42")),
        (hooks.DeleteWebhookEndpoint, pb.DeleteWebhookEndpointRequest(endpoint_id="")),
        (hooks.RotateWebhookSecret, pb.RotateWebhookSecretRequest(endpoint_id="x" * 36)),
        (hooks.ListWebhookDeliveries, pb.ListWebhookDeliveriesRequest(endpoint_id="nope")),
        (hooks.RedeliverWebhook, pb.RedeliverWebhookRequest(delivery_id=str(uuid7()))),
    ]
    for call, request in ids:
        assert await invalid(call, request, who, "endpoint_id"), request
    redeliver = pb.RedeliverWebhookRequest(endpoint_id=endpoint.id, delivery_id="d")
    assert await invalid(hooks.RedeliverWebhook, redeliver, who, "delivery_id")

    listing = hooks.ListWebhookEndpoints
    assert await invalid(listing, pb.ListWebhookEndpointsRequest(page_size=-1), who, "page_size")
    assert await invalid(
        listing, pb.ListWebhookEndpointsRequest(page_token="garbage"), who, "page_token"
    )
    deliveries = hooks.ListWebhookDeliveries
    D = pb.ListWebhookDeliveriesRequest
    assert await invalid(deliveries, D(endpoint_id=endpoint.id, state=9), who, "state")  # type: ignore[arg-type]
    assert await invalid(deliveries, D(endpoint_id=endpoint.id, page_size=-3), who, "page_size")
    # A token of another endpoint's listing (or of other filters) does not continue this one.
    other = pb.ListWebhookEndpointsRequest(page_size=1)
    await create(hooks, who)
    token = (await listing(other, metadata=who)).next_page_token
    assert token
    assert await invalid(
        deliveries, D(endpoint_id=endpoint.id, page_token=token), who, "page_token"
    )


async def test_a_job_webhook_with_bad_fields_creates_no_job(
    clients: Clients,
) -> None:
    who = someone(clients)
    image = job_pb2.ImageParams(prompt="hooked", size="256x256")
    for hook, field in [
        (pb.JobWebhook(url="ftp://127.0.0.1/x"), "webhook.url"),
        (pb.JobWebhook(), "webhook.url"),
        (pb.JobWebhook(url=URL, event_types=["job.done"]), "webhook.event_types"),
    ]:
        request = job_service_pb2.CreateJobRequest(image=image, webhook=hook)
        assert await invalid(clients.jobs.CreateJob, request, who, field)
    listed = await clients.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=who)
    assert list(listed.jobs) == []


# --- ownership ----------------------------------------------------------------------------


async def test_another_users_endpoint_is_not_found(
    clients: Clients, hooks: WebhookServiceStub, deps: Dependencies
) -> None:
    owner, other = someone(clients), someone(clients)
    endpoint = (await create(hooks, owner)).endpoint
    delivery_id = await insert_delivery(deps, endpoint.id, state=pb.DELIVERY_STATE_FAILED)
    eid = endpoint.id
    calls = [
        (hooks.GetWebhookEndpoint, pb.GetWebhookEndpointRequest(endpoint_id=eid)),
        (
            hooks.UpdateWebhookEndpoint,
            pb.UpdateWebhookEndpointRequest(
                endpoint_id=eid, update_mask=["description"], description="mine now"
            ),
        ),
        (hooks.RotateWebhookSecret, pb.RotateWebhookSecretRequest(endpoint_id=eid)),
        (hooks.ListWebhookDeliveries, pb.ListWebhookDeliveriesRequest(endpoint_id=eid)),
        (
            hooks.RedeliverWebhook,
            pb.RedeliverWebhookRequest(endpoint_id=eid, delivery_id=delivery_id),
        ),
        (hooks.DeleteWebhookEndpoint, pb.DeleteWebhookEndpointRequest(endpoint_id=eid)),
    ]
    for call, request in calls:
        error = await refused(call, request, other)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (request, error)
    listed = await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=other)
    assert list(listed.endpoints) == []
    # Nothing of the owner's changed.
    got = await hooks.GetWebhookEndpoint(
        pb.GetWebhookEndpointRequest(endpoint_id=eid), metadata=owner
    )
    assert got.endpoint == endpoint
    deliveries = await hooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(endpoint_id=eid), metadata=owner
    )
    assert [(d.id, d.state) for d in deliveries.deliveries] == [
        (delivery_id, pb.DELIVERY_STATE_FAILED)
    ]


# --- deliveries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    status_code: int
    error: str = ""
    response_head: str = ""
    manual: bool = False


def _insert_delivery(
    database_url: str, endpoint_id: str, state: int, attempts: list[Attempt]
) -> str:
    """A delivery with its attempts, as the webhook sender records them."""
    delivery_id, job_id = uuid7(), uuid7()
    job = job_pb2.Job(id=str(job_id), status=job_pb2.JOB_STATUS_SUCCEEDED, version=4)
    event = events_pb2.JobEvent(job=job, owner="someone", type="job.succeeded")
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(webhook_deliveries).values(
                    id=delivery_id,
                    endpoint_id=uuid.UUID(endpoint_id),
                    event_id=uuid7(),
                    event_type="job.succeeded",
                    job_id=job_id,
                    job_version=4,
                    event=event.SerializeToString(),
                    state=state,
                    attempts=len(attempts),
                    next_attempt_at=sa.func.now() + sa.text("interval '1 hour'"),
                )
            )
            for number, attempt in enumerate(attempts, 1):
                conn.execute(
                    sa.insert(webhook_attempts).values(
                        delivery_id=delivery_id,
                        number=number,
                        started_at=sa.func.now(),
                        status_code=attempt.status_code,
                        latency_ms=250 * number,
                        response_head=attempt.response_head,
                        error=attempt.error,
                        manual=attempt.manual,
                    )
                )
    finally:
        engine.dispose()
    return str(delivery_id)


async def insert_delivery(
    deps: Dependencies, endpoint_id: str, *, state: int, attempts: list[Attempt] | None = None
) -> str:
    return await asyncio.to_thread(
        _insert_delivery, deps.database_url, endpoint_id, state, attempts or []
    )


async def test_deliveries_are_listed_with_their_attempts_and_redelivered(
    clients: Clients, hooks: WebhookServiceStub, deps: Dependencies
) -> None:
    who = someone(clients)
    endpoint = (await create(hooks, who)).endpoint
    failed = await insert_delivery(
        deps,
        endpoint.id,
        state=pb.DELIVERY_STATE_FAILED,
        attempts=[Attempt(0, error="connection refused"), Attempt(500, response_head="oops")],
    )
    pending = await insert_delivery(deps, endpoint.id, state=pb.DELIVERY_STATE_PENDING)
    succeeded = await insert_delivery(
        deps, endpoint.id, state=pb.DELIVERY_STATE_SUCCEEDED, attempts=[Attempt(204)]
    )
    D = pb.ListWebhookDeliveriesRequest
    listed = await hooks.ListWebhookDeliveries(D(endpoint_id=endpoint.id), metadata=who)
    assert [d.id for d in listed.deliveries] == [succeeded, pending, failed]  # newest first
    assert listed.next_page_token == ""
    by_id = {d.id: d for d in listed.deliveries}
    first = by_id[failed]
    assert (first.endpoint_id, first.event_type, first.job_version) == (
        endpoint.id,
        "job.succeeded",
        4,
    )
    assert first.state == pb.DELIVERY_STATE_FAILED
    assert not first.HasField("next_attempt_time")  # pending deliveries only
    assert [(a.number, a.status_code, a.error, a.response_head) for a in first.attempts] == [
        (1, 0, "connection refused", ""),
        (2, 500, "", "oops"),
    ]
    assert [a.latency.ToMilliseconds() for a in first.attempts] == [250, 500]
    assert by_id[pending].HasField("next_attempt_time") and not by_id[pending].attempts
    assert [a.status_code for a in by_id[succeeded].attempts] == [204]

    only_failed = await hooks.ListWebhookDeliveries(
        D(endpoint_id=endpoint.id, state=pb.DELIVERY_STATE_FAILED), metadata=who
    )
    assert [d.id for d in only_failed.deliveries] == [failed]
    page = await hooks.ListWebhookDeliveries(D(endpoint_id=endpoint.id, page_size=2), metadata=who)
    assert [d.id for d in page.deliveries] == [succeeded, pending]
    rest = await hooks.ListWebhookDeliveries(
        D(endpoint_id=endpoint.id, page_size=2, page_token=page.next_page_token), metadata=who
    )
    assert [d.id for d in rest.deliveries] == [failed] and rest.next_page_token == ""

    before = now()
    redelivered = (
        await hooks.RedeliverWebhook(
            pb.RedeliverWebhookRequest(endpoint_id=endpoint.id, delivery_id=failed), metadata=who
        )
    ).delivery
    assert redelivered.id == failed and redelivered.state == pb.DELIVERY_STATE_PENDING
    due = redelivered.next_attempt_time.ToDatetime(dt.UTC)
    assert before - CLOCK_SLACK <= due <= now() + CLOCK_SLACK
    assert len(redelivered.attempts) == 2  # its history stays

    unknown = pb.RedeliverWebhookRequest(endpoint_id=endpoint.id, delivery_id=str(uuid7()))
    error = await refused(hooks.RedeliverWebhook, unknown, who)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Another endpoint's delivery, even the caller's own, is not this endpoint's.
    other = (await create(hooks, who)).endpoint
    error = await refused(
        hooks.RedeliverWebhook,
        pb.RedeliverWebhookRequest(endpoint_id=other.id, delivery_id=succeeded),
        who,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    off = pb.UpdateWebhookEndpointRequest(
        endpoint_id=endpoint.id, update_mask=["enabled"], enabled=False
    )
    await hooks.UpdateWebhookEndpoint(off, metadata=who)
    error = await refused(
        hooks.RedeliverWebhook,
        pb.RedeliverWebhookRequest(endpoint_id=endpoint.id, delivery_id=succeeded),
        who,
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "disabled" in (error.details() or "")

    # Deleting the endpoint deletes its deliveries.
    await hooks.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(endpoint_id=endpoint.id), metadata=who
    )
    assert await asyncio.to_thread(count_deliveries, deps.database_url, endpoint.id) == 0


def count_deliveries(database_url: str, endpoint_id: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(
                webhook_deliveries.c.endpoint_id == uuid.UUID(endpoint_id)
            )
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


# --- CreateJob's one-off webhook ----------------------------------------------------------


async def test_create_job_with_a_webhook(clients: Clients, hooks: WebhookServiceStub) -> None:
    who = someone(clients)
    request = job_service_pb2.CreateJobRequest(
        request_id=f"hooked-{uuid.uuid4().hex}",
        image=job_pb2.ImageParams(prompt="a hooked job", size="256x256"),
        webhook=pb.JobWebhook(url=URL, event_types=["job.failed", "job.succeeded"]),
    )
    created = await clients.jobs.CreateJob(request, metadata=who)
    assert created.created and created.webhook_secret.startswith("whsec_")
    replay = await clients.jobs.CreateJob(request, metadata=who)
    assert not replay.created and replay.job.id == created.job.id
    assert replay.webhook_secret == ""  # shown once, to the call that created the job
    listed = await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=who)
    [endpoint] = listed.endpoints
    assert endpoint.job_id == created.job.id
    assert endpoint.url == URL
    assert list(endpoint.event_types) == ["job.succeeded", "job.failed"]
    assert list(endpoint.kinds) == [] and endpoint.enabled
    assert created.webhook_secret.encode() not in listed.SerializeToString()

    plain = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="no hook", size="256x256"),
        webhook=pb.JobWebhook(url=PUBLIC_URL),
    )
    second = await clients.jobs.CreateJob(plain, metadata=who)
    listed = await hooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(), metadata=who)
    newest = listed.endpoints[0]
    assert (newest.job_id, newest.url) == (second.job.id, PUBLIC_URL)
    assert list(newest.event_types) == list(FINISHED_EVENT_TYPES)
    assert second.webhook_secret and second.webhook_secret != created.webhook_secret


# --- the default URL policy, on a job_service of this module's own -------------------------

CAP = 2


@dataclass
class Strict:
    hooks: WebhookServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub


@pytest_asyncio.fixture(scope="module")
async def strict(
    stack: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Strict]:
    """A second job_service on the session's database and NATS with the services' defaults:
    https only, no private networks; and a cap of CAP endpoints per user."""
    env = {
        **stack.job_service.env,
        "WEBHOOK_ALLOW_HTTP": "false",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "false",
        "MAX_WEBHOOK_ENDPOINTS_PER_USER": str(CAP),
    }
    process = ServiceProcess(
        name="job_service-strict-webhooks",
        module="services.job_service",
        env=env,
        log_dir=tmp_path_factory.mktemp("strict-webhooks"),
        worker_listener=True,
    )
    await asyncio.to_thread(process.start)
    channel = grpc.aio.insecure_channel(process.addr)
    try:
        yield Strict(WebhookServiceStub(channel), job_service_pb2_grpc.JobServiceStub(channel))
    finally:
        await channel.close()
        await asyncio.to_thread(process.stop, 10)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://172.20.0.5/hook",
        "https://192.168.0.10:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://[::1]/hook",
        "https://[fd00::5]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[64:ff9b::a9fe:a9fe]/hook",
        "https://localhost/hook",  # a name that resolves to loopback
    ],
)
async def test_private_addresses_are_refused_by_default(
    clients: Clients, strict: Strict, url: str
) -> None:
    who = someone(clients)
    C = pb.CreateWebhookEndpointRequest
    why = await invalid(strict.hooks.CreateWebhookEndpoint, C(url=url), who, "url")
    assert "private, loopback, link-local or reserved address" in why
    assert "127.0.0.1" not in why and "::1" not in why  # never the address it resolved to
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="refused hook", size="256x256"),
        webhook=pb.JobWebhook(url=url),
    )
    assert await invalid(strict.jobs.CreateJob, request, who, "webhook.url")
    endpoint = (await strict.hooks.CreateWebhookEndpoint(C(url=PUBLIC_URL), metadata=who)).endpoint
    update = pb.UpdateWebhookEndpointRequest(endpoint_id=endpoint.id, update_mask=["url"], url=url)
    assert await invalid(strict.hooks.UpdateWebhookEndpoint, update, who, "url")


async def test_plain_http_is_refused_by_default(clients: Clients, strict: Strict) -> None:
    who = someone(clients)
    request = pb.CreateWebhookEndpointRequest(url="http://93.184.215.14/hook")
    why = await invalid(strict.hooks.CreateWebhookEndpoint, request, who, "url")
    assert why == "must be https"


async def test_endpoints_per_user_are_capped_and_job_webhooks_do_not_count(
    clients: Clients, strict: Strict
) -> None:
    who = someone(clients)
    request = pb.CreateWebhookEndpointRequest(url=PUBLIC_URL)
    made = [await strict.hooks.CreateWebhookEndpoint(request, metadata=who) for _ in range(CAP)]
    error = await refused(strict.hooks.CreateWebhookEndpoint, request, who)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {CAP}" in (error.details() or "")
    assert "MAX_WEBHOOK_ENDPOINTS_PER_USER" in (error.details() or "")
    job = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="one-off", size="256x256"),
        webhook=pb.JobWebhook(url=PUBLIC_URL),
    )
    assert (await strict.jobs.CreateJob(job, metadata=who)).webhook_secret
    # Deleting one makes room again.
    await strict.hooks.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(endpoint_id=made[0].endpoint.id), metadata=who
    )
    await strict.hooks.CreateWebhookEndpoint(request, metadata=who)
