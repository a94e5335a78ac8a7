"""Webhooks end to end: endpoints registered through WebhookService, jobs run by the session's
stack, deliveries made by its webhook sender (retry schedule compressed in tests/conftest.py) to a
real HTTP receiver, signatures verified with the standardwebhooks package."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import Engine, create_engine, text
from standardwebhooks.webhooks import WebhookVerificationError

from devstack.deps import Dependencies
from devstack.services import Services
from media.v1 import job_pb2, job_service_pb2, webhook_service_pb2, webhook_service_pb2_grpc
from services.common import webhook_signing
from tests.conftest import Clients
from tests.e2e.helpers import WAIT_SECONDS, create, fetch, wait_terminal
from tests.receivers import Receiver

pytestmark = pytest.mark.e2e

SUCCEEDED = webhook_service_pb2.DELIVERY_STATE_SUCCEEDED
FAILED = webhook_service_pb2.DELIVERY_STATE_FAILED
SMALL = job_pb2.ImageParams(prompt="a webhook", size="256x256")
Metadata = tuple[tuple[str, str], ...]


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture(scope="module")
def webhooks(clients: Clients) -> webhook_service_pb2_grpc.WebhookServiceStub:
    return webhook_service_pb2_grpc.WebhookServiceStub(clients.job_channel)


@pytest.fixture(scope="module")
def database(deps: Dependencies) -> Iterator[Engine]:
    engine = create_engine(deps.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def someone(clients: Clients) -> Metadata:
    """A user of the test's own, so its endpoints see its jobs only."""
    return clients.user(f"webhooks-{uuid.uuid4().hex[:8]}")


async def register(
    webhooks: webhook_service_pb2_grpc.WebhookServiceStub,
    user: Metadata,
    url: str,
    *event_types: str,
) -> webhook_service_pb2.CreateWebhookEndpointResponse:
    return await webhooks.CreateWebhookEndpoint(
        webhook_service_pb2.CreateWebhookEndpointRequest(url=url, event_types=list(event_types)),
        metadata=user,
    )


async def deliveries(
    webhooks: webhook_service_pb2_grpc.WebhookServiceStub, user: Metadata, endpoint_id: str
) -> list[webhook_service_pb2.WebhookDelivery]:
    response = await webhooks.ListWebhookDeliveries(
        webhook_service_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id), metadata=user
    )
    return list(response.deliveries)


async def settled(
    webhooks: webhook_service_pb2_grpc.WebhookServiceStub,
    user: Metadata,
    endpoint_id: str,
    count: int = 1,
) -> list[webhook_service_pb2.WebhookDelivery]:
    """The endpoint's deliveries once `count` exist and none is pending any more."""

    async def loop() -> list[webhook_service_pb2.WebhookDelivery]:
        while True:
            found = await deliveries(webhooks, user, endpoint_id)
            if len(found) >= count and all(d.state in (SUCCEEDED, FAILED) for d in found):
                return found
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(loop(), WAIT_SECONDS)


async def run_job(clients: Clients, user: Metadata, **params: Any) -> job_pb2.Job:
    job = await create(clients, user, image=SMALL, **params)
    done = await wait_terminal(clients, user, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done
    return done


async def test_a_flaky_receiver_gets_the_succeeded_job_on_the_third_attempt(
    clients: Clients, webhooks: webhook_service_pb2_grpc.WebhookServiceStub, receiver: Receiver
) -> None:
    user = someone(clients)
    receiver.answer("/flaky", 500, 500)
    endpoint = await register(webhooks, user, receiver.url("/flaky"), "job.succeeded")
    job = await run_job(clients, user)

    received = await receiver.wait_for("/flaky", 3)
    assert len({r.webhook_id for r in received}) == 1
    documents = [r.verify(endpoint.secret) for r in received]
    assert {d["type"] for d in documents} == {"job.succeeded"}
    data = documents[-1]["data"]
    assert (data["id"], data["status"], data["version"]) == (
        job.id,
        "JOB_STATUS_SUCCEEDED",
        job.version,
    )
    assert documents[-1]["timestamp"] == job.update_time.ToJsonString()
    assert len(data["outputs"]) == len(job.outputs) == 1
    output = data["outputs"][0]
    assert output["url_expire_time"]
    content = await fetch(output["url"])
    assert hashlib.sha256(content).hexdigest() == output["sha256"] == job.outputs[0].sha256

    [delivery] = await settled(webhooks, user, endpoint.endpoint.id)
    assert delivery.id == received[0].webhook_id
    assert (delivery.state, delivery.event_type, delivery.job_id) == (
        SUCCEEDED,
        "job.succeeded",
        job.id,
    )
    assert [(a.number, a.status_code) for a in delivery.attempts] == [(1, 500), (2, 500), (3, 200)]


async def test_410_disables_the_endpoint_and_nothing_more_is_sent(
    clients: Clients, webhooks: webhook_service_pb2_grpc.WebhookServiceStub, receiver: Receiver
) -> None:
    user = someone(clients)
    receiver.answer("/gone", 410)
    gone = await register(webhooks, user, receiver.url("/gone"), "job.succeeded")
    await run_job(clients, user)
    await receiver.wait_for("/gone", 1)
    [delivery] = await settled(webhooks, user, gone.endpoint.id)
    assert delivery.state == FAILED

    endpoint = (
        await webhooks.GetWebhookEndpoint(
            webhook_service_pb2.GetWebhookEndpointRequest(endpoint_id=gone.endpoint.id),
            metadata=user,
        )
    ).endpoint
    assert not endpoint.enabled
    assert endpoint.disabled_reason == "the endpoint answered 410 Gone"
    assert endpoint.HasField("disable_time")

    # The next job: another endpoint of the same user hears of it, the disabled one does not.
    marker = await register(webhooks, user, receiver.url("/gone-marker"), "job.succeeded")
    await run_job(clients, user)
    await receiver.wait_for("/gone-marker", 1)
    await settled(webhooks, user, marker.endpoint.id)
    assert len(receiver.at("/gone")) == 1
    assert len(await deliveries(webhooks, user, gone.endpoint.id)) == 1


async def test_a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends(
    clients: Clients,
    webhooks: webhook_service_pb2_grpc.WebhookServiceStub,
    receiver: Receiver,
    database: Engine,
) -> None:
    user = someone(clients)
    created = await register(webhooks, user, receiver.url("/rotate"), "job.succeeded")
    rotated = await webhooks.RotateWebhookSecret(
        webhook_service_pb2.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id),
        metadata=user,
    )
    old, new = created.secret, rotated.secret
    assert old != new and rotated.endpoint.HasField("previous_secret_expire_time")

    await run_job(clients, user)
    [during] = await receiver.wait_for("/rotate", 1)
    during.verify(new)
    during.verify(old)

    # The overlap (WEBHOOK_SECRET_OVERLAP_SECONDS, a day) over: as if that time had passed.
    def expire() -> None:
        with database.begin() as conn:
            conn.execute(
                text(
                    "UPDATE webhook_endpoints SET previous_secret_expires_at = now() "
                    "- interval '1 second' WHERE id = :id"
                ),
                {"id": uuid.UUID(created.endpoint.id)},
            )

    await asyncio.to_thread(expire)
    await run_job(clients, user)
    after = (await receiver.wait_for("/rotate", 2))[1]
    after.verify(new)
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


async def test_another_users_jobs_never_reach_my_endpoint(
    clients: Clients, webhooks: webhook_service_pb2_grpc.WebhookServiceStub, receiver: Receiver
) -> None:
    me, other = someone(clients), someone(clients)
    mine = await register(webhooks, me, receiver.url("/mine"), "job.succeeded", "job.queued")
    theirs = await run_job(clients, other)
    my_job = await run_job(clients, me)
    received = await receiver.wait_for("/mine", 2)
    found = await settled(webhooks, me, mine.endpoint.id, 2)
    assert {r.json()["data"]["id"] for r in received} == {my_job.id}
    assert {d.job_id for d in found} == {my_job.id}
    assert theirs.id not in {r.json()["data"]["id"] for r in receiver.at("/mine")}


async def test_a_jobs_own_webhook_is_signed_with_the_secret_create_job_returned(
    clients: Clients, receiver: Receiver
) -> None:
    user = someone(clients)
    response = await clients.jobs.CreateJob(
        job_service_pb2.CreateJobRequest(
            image=SMALL,
            webhook=webhook_service_pb2.JobWebhook(url=receiver.url("/one-off")),
        ),
        metadata=user,
    )
    assert response.webhook_secret.startswith(webhook_signing.SECRET_PREFIX)
    done = await wait_terminal(clients, user, response.job.id)
    [received] = await receiver.wait_for("/one-off", 1)
    document = received.verify(response.webhook_secret)
    assert document["type"] == "job.succeeded"
    assert document["data"]["id"] == done.id


async def test_a_hanging_receiver_does_not_delay_another_endpoint(
    clients: Clients, webhooks: webhook_service_pb2_grpc.WebhookServiceStub, receiver: Receiver
) -> None:
    slow, fast = someone(clients), someone(clients)
    release = receiver.hold("/hangs")
    try:
        await register(webhooks, slow, receiver.url("/hangs"), "job.succeeded")
        await run_job(clients, slow)
        await receiver.wait_for("/hangs", 1)
        await register(webhooks, fast, receiver.url("/answers"), "job.succeeded")
        await run_job(clients, fast)
        await receiver.wait_for("/answers", 1)
        assert not release.is_set()  # delivered while the other is still held
    finally:
        release.set()


@asynccontextmanager
async def sender_env(stack: Services, **env: str) -> AsyncIterator[None]:
    """Restarts the stack's webhook sender with these settings, and back afterwards (off the
    main thread: see tests/faults' spawn)."""
    sender = stack.webhooks
    assert sender is not None
    saved = dict(sender.env)
    sender.env.update(env)
    await asyncio.to_thread(sender.restart)
    try:
        yield
    finally:
        sender.env.clear()
        sender.env.update(saved)
        await asyncio.to_thread(sender.restart)


async def test_a_sender_refusing_private_networks_sends_nothing_to_loopback(
    clients: Clients,
    stack: Services,
    webhooks: webhook_service_pb2_grpc.WebhookServiceStub,
    receiver: Receiver,
) -> None:
    # job_service (allowing private networks here) registers it; the sender is what refuses.
    user = someone(clients)
    endpoint = await register(webhooks, user, receiver.url("/loopback"), "job.succeeded")
    async with sender_env(stack, WEBHOOK_ALLOW_PRIVATE_NETWORKS="false"):
        await run_job(clients, user)
        [delivery] = await settled(webhooks, user, endpoint.endpoint.id)
    assert delivery.state == FAILED
    assert len(delivery.attempts) == 4  # the compressed schedule: 3 retries
    for attempt in delivery.attempts:
        assert attempt.status_code == 0
        assert attempt.error == (
            "the URL points at a private, loopback, link-local or reserved address"
        )
    assert receiver.at("/loopback") == []
