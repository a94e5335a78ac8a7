"""A finished job's notification arrives on WatchJobs with the job, live and when a feed resumes
from a cursor: the very notification ListNotifications (job_service) shows in the inbox."""

from __future__ import annotations

import secrets

import grpc
import pytest

from media.v1 import job_pb2, notifications_pb2, notifications_pb2_grpc, notifier_service_pb2
from tests.conftest import Clients
from tests.e2e.helpers import create
from tests.e2e.test_watch_jobs import feed, read, snapshot

pytestmark = pytest.mark.e2e

PROMPT = "a lighthouse for the inbox"


async def _until_finished(
    call: grpc.aio.UnaryStreamCall, job_id: str
) -> list[notifier_service_pb2.WatchJobsResponse]:
    """The feed's job messages up to and including the one where `job_id` succeeded."""
    seen = []
    while True:
        message = await read(call)
        assert message.WhichOneof("event") == "job", message
        seen.append(message)
        if message.job.id == job_id and message.job.status == job_pb2.JOB_STATUS_SUCCEEDED:
            return seen


async def test_the_finished_job_arrives_with_its_notification_live_and_resumed(
    clients: Clients,
) -> None:
    user = clients.user(f"bell-{secrets.token_hex(4)}")
    live = feed(clients, user)
    resumed = None
    try:
        listed, cursor = await snapshot(live)
        assert listed == []  # a user of its own: nothing unfinished
        job = await create(clients, user, image=job_pb2.ImageParams(prompt=PROMPT, size="256x256"))
        messages = await _until_finished(live, job.id)

        # Only the change that finished the job carries one.
        assert [m.HasField("notification") for m in messages] == [False] * (len(messages) - 1) + [
            True
        ]
        note = messages[-1].notification
        assert (note.type, note.title, note.message, note.job_id, note.read) == (
            "job.succeeded",
            "Image ready",
            PROMPT,
            job.id,
            False,
        )
        inbox = await notifications_pb2_grpc.NotificationServiceStub(
            clients.job_channel
        ).ListNotifications(notifications_pb2.ListNotificationsRequest(), metadata=user)
        assert [n.id for n in inbox.notifications] == [note.id]
        assert inbox.unread_count == 1
        assert inbox.notifications[0] == note  # the same notification, field for field

        # A feed resumed from before the job was created replays it, notification included.
        resumed = feed(clients, user, cursor=cursor)
        replayed = await _until_finished(resumed, job.id)
        assert [(m.job.version, m.job.status) for m in replayed] == [
            (m.job.version, m.job.status) for m in messages
        ]
        assert [m.HasField("notification") for m in replayed[:-1]] == [False] * (len(replayed) - 1)
        assert replayed[-1].notification == note
    finally:
        live.cancel()
        if resumed is not None:
            resumed.cancel()
