"""A webhook sender killed (SIGKILL) while a receiver holds its request: the delivery is sent
again after a restart, once its claim lapses, with the same webhook-id.

The attempt cut short was never recorded (the process died before it could), so the delivery's
history shows the one attempt that got an answer; the receiver saw both requests, as at-least-once
delivery allows, and deduplicates them by their webhook-id.
"""

from __future__ import annotations

import asyncio

import pytest

from media.v1 import webhook_service_pb2, webhook_service_pb2_grpc
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
