"""The webhook sender under faults; nothing is lost, and a receiver dedupes by webhook-id.

- Killed (SIGKILL) while a receiver holds its request: the delivery is sent again after a
  restart, once its claim lapses, with the same webhook-id. The attempt cut short was never
  recorded (the process died before it could), so the delivery's history shows the one attempt
  that got an answer; the receiver saw both requests, as at-least-once delivery allows.
- A NATS restart: events wait in job_service's outbox, then reach every endpoint.
- Postgres down when the sender reads events: it cannot record their deliveries, hands the
  events back, and delivers them once Postgres is back.
- Every sender down while MEDIA_EVENTS loses the events (as when they outlive the feed's
  retention): they wait in MEDIA_WEBHOOK_EVENTS and are delivered once a sender is back.
"""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import pytest

from media.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from services.common import jetstream
from services.common.lifecycle import SUCCEEDED
from tests.faults.helpers import SMALL_IMAGE, WAIT_SECONDS, FaultStack
from tests.receivers import Receiver

pytestmark = pytest.mark.faults

STACK_WORKERS = 1
# A claim (lease) lasts the job read, the HTTP attempt and recording it: 2 + 2 + 2 + 1 s here.
STACK_ENV = {
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "DB_CALL_TIMEOUT_SECONDS": "2",
    "WEBHOOK_POLL_SECONDS": "0.2",
}


async def test_a_sender_killed_mid_delivery_delivers_after_a_restart(fault: FaultStack) -> None:
    sender = fault.services.webhooks
    assert sender is not None
    receiver = await Receiver().start()
    release = receiver.hold("/held")
    try:
        webhooks = webhook_service_pb2_grpc.WebhookServiceStub(fault.clients.job_channel)
        created = await webhooks.CreateWebhookEndpoint(
            webhook_service_pb2.CreateWebhookEndpointRequest(
                url=receiver.url("/held"), event_types=["job.succeeded"]
            ),
            metadata=fault.user,
        )
        job = await fault.create(image=SMALL_IMAGE)
        assert (await fault.wait_terminal(job.id)).status == SUCCEEDED

        [first] = await receiver.wait_for("/held", 1, WAIT_SECONDS)
        sender.kill()
        release.set()  # later requests are answered 200 at once
        await fault.spawn(sender.start)

        both = await receiver.wait_for("/held", 2, WAIT_SECONDS)
        assert both[1].webhook_id == first.webhook_id
        for received in both:
            document = received.verify(created.secret)
            assert document["type"] == "job.succeeded"
            assert document["data"]["id"] == job.id

        async def settled() -> webhook_service_pb2.WebhookDelivery:
            while True:
                listed = await webhooks.ListWebhookDeliveries(
                    webhook_service_pb2.ListWebhookDeliveriesRequest(
                        endpoint_id=created.endpoint.id
                    ),
                    metadata=fault.user,
                )
                if listed.deliveries and listed.deliveries[0].attempts:
                    return listed.deliveries[0]
                await asyncio.sleep(0.1)

        delivery = await asyncio.wait_for(settled(), WAIT_SECONDS)
        assert delivery.id == first.webhook_id
        assert delivery.state == webhook_service_pb2.DELIVERY_STATE_SUCCEEDED
        assert [(a.number, a.status_code) for a in delivery.attempts] == [(1, 200)]
        assert len(receiver.at("/held")) == 2
    finally:
        release.set()
        await receiver.stop()


async def _endpoint(fault: FaultStack, receiver: Receiver, path: str) -> str:
    webhooks = webhook_service_pb2_grpc.WebhookServiceStub(fault.clients.job_channel)
    created = await webhooks.CreateWebhookEndpoint(
        webhook_service_pb2.CreateWebhookEndpointRequest(
            url=receiver.url(path), event_types=["job.succeeded"]
        ),
        metadata=fault.user,
    )
    return created.secret


async def _arrived(receiver: Receiver, path: str, secret: str, job_ids: set[str]) -> None:
    """Each job's success arrives, signed; none twice, none else."""
    received = await receiver.wait_for(path, len(job_ids), WAIT_SECONDS)
    assert sorted(r.verify(secret)["data"]["id"] for r in received) == sorted(job_ids)


async def test_no_webhook_is_lost_across_a_nats_restart(fault: FaultStack) -> None:
    receiver = await Receiver().start()
    try:
        secret = await _endpoint(fault, receiver, "/nats")
        await fault.spawn(fault.deps.stop_nats)
        try:
            # The events wait in job_service's outbox.
            during = [await fault.create(image=SMALL_IMAGE) for _ in range(2)]
        finally:
            await fault.spawn(fault.deps.start_nats)
        after = [await fault.create(image=SMALL_IMAGE) for _ in range(2)]
        await _arrived(receiver, "/nats", secret, {job.id for job in [*during, *after]})
    finally:
        await receiver.stop()


async def test_a_database_outage_at_the_sender_loses_no_event(fault: FaultStack) -> None:
    sender = fault.services.webhooks
    assert sender is not None and sender.pid is not None
    receiver = await Receiver().start()
    try:
        secret = await _endpoint(fault, receiver, "/postgres")
        os.kill(sender.pid, signal.SIGSTOP)  # the events wait for it in MEDIA_EVENTS
        try:
            jobs = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]
            for job in jobs:
                assert (await fault.wait_terminal(job.id)).status == SUCCEEDED
            await fault.spawn(fault.deps.stop_postgres)
        finally:
            os.kill(sender.pid, signal.SIGCONT)
        try:
            # It reads the events and cannot record their deliveries: they are handed back.
            await asyncio.sleep(2)
            assert receiver.at("/postgres") == []
        finally:
            await fault.spawn(fault.deps.start_postgres)
        await _arrived(receiver, "/postgres", secret, {job.id for job in jobs})
    finally:
        await receiver.stop()


async def test_events_wait_for_the_sender_after_the_feed_has_dropped_them(
    fault: FaultStack,
) -> None:
    sender = fault.services.webhooks
    assert sender is not None
    receiver = await Receiver().start()
    nc = await nats.connect(fault.deps.nats_url)
    try:
        js = nc.jetstream()
        secret = await _endpoint(fault, receiver, "/aged")
        await asyncio.to_thread(sender.stop)
        try:
            jobs = [await fault.create(image=SMALL_IMAGE) for _ in range(3)]
            for job in jobs:
                assert (await fault.wait_terminal(job.id)).status == SUCCEEDED
            job_ids = {job.id for job in jobs}

            async def events_of(stream: str) -> dict[str, int]:
                """How many events of each of these jobs the stream holds."""
                info = await js.stream_info(stream, subjects_filter=jetstream.ALL_EVENTS)
                held: dict[str, int] = dict.fromkeys(job_ids, 0)
                for subject, count in (info.state.subjects or {}).items():
                    if jetstream.job_id_of_event(subject) in held:
                        held[jetstream.job_id_of_event(subject)] += count
                return held

            async def copied() -> None:
                # Each job's success is in MEDIA_EVENTS (not only in the outbox), and every event
                # of these jobs there is in the sender's stream as well.
                while True:
                    last = [(await fault.published_events(job.id))[-1].status for job in jobs]
                    feed = await events_of(jetstream.EVENTS_STREAM)
                    if (
                        set(last) == {SUCCEEDED}
                        and await events_of(jetstream.WEBHOOK_EVENTS_STREAM) == feed
                    ):
                        return
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(copied(), WAIT_SECONDS)
            await js.purge_stream(jetstream.EVENTS_STREAM)  # as if they had aged out
        finally:
            await fault.spawn(sender.start)
        await _arrived(receiver, "/aged", secret, job_ids)
    finally:
        await nc.close()
        await receiver.stop()
