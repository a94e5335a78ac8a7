"""The notification inbox against the running stack: a finished job leaves its owner exactly one
notification, committed with the change that finished it and carried by that change's event
(every status event names its type); ListNotifications and MarkNotificationsRead page, filter,
count and mark the caller's own only. And the sweeper's retention of notifications, webhook
deliveries and one-off endpoints, run on a database of the test's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import grpc
import pytest
import sqlalchemy as sa

from devstack.deps import Dependencies
from devstack.services import Services
from media.v1 import job_pb2, job_service_pb2, webhook_service_pb2, worker_service_pb2
from media.v1 import notifications_pb2 as pb
from media.v1.notifications_pb2_grpc import NotificationServiceStub
from services.common import jetstream
from services.common.errors import field_violations
from services.common.ids import uuid7
from services.common.lifecycle import IMAGE, RUNNING, SUCCEEDED
from services.common.sealing import Sealer
from services.job_service import migrate
from services.job_service.schema import (
    jobs,
    notifications,
    webhook_deliveries,
    webhook_endpoints,
)
from services.job_service.settings import SweepSettings
from services.job_service.sweep_queries import sweeper_engine
from services.job_service.sweeper import Sweeper
from tests.conftest import Clients, workers_paused
from tests.e2e.helpers import create, wait_terminal
from tests.integration.test_outbox import events_of

pytestmark = pytest.mark.e2e

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def inbox(clients: Clients) -> NotificationServiceStub:
    return NotificationServiceStub(clients.job_channel)


def someone(clients: Clients) -> Metadata:
    """A user of the test's own: nobody else's notifications in its inbox."""
    return clients.user(f"inbox-{uuid.uuid4().hex[:12]}")


async def listed(
    inbox: NotificationServiceStub, who: Metadata, **fields: object
) -> pb.ListNotificationsResponse:
    response: pb.ListNotificationsResponse = await inbox.ListNotifications(
        pb.ListNotificationsRequest(**fields),  # type: ignore[arg-type]
        metadata=who,
    )
    return response


async def canceled_jobs(clients: Clients, who: Metadata, count: int) -> list[str]:
    """Jobs created and canceled before any worker sees them: one notification each."""
    ids = []
    for i in range(count):
        job = await create(
            clients, who, image=job_pb2.ImageParams(prompt=f"cancel {i}", size="256x256")
        )
        await clients.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id), metadata=who)
        ids.append(job.id)
    return ids


async def test_a_finished_job_leaves_one_notification_carried_by_its_event(
    clients: Clients, inbox: NotificationServiceStub, deps: Dependencies
) -> None:
    who = someone(clients)
    prompt = "two foxes in the snow"
    job = await create(
        clients, who, image=job_pb2.ImageParams(prompt=prompt, size="256x256", number_of_images=2)
    )
    done = await wait_terminal(clients, who, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    found = await listed(inbox, who)
    [notification] = found.notifications
    assert (notification.type, notification.title, notification.message) == (
        "job.succeeded",
        "2 images ready",
        prompt,
    )
    assert notification.job_id == job.id and not notification.read
    assert uuid.UUID(notification.id).version == 7
    assert found.unread_count == 1 and found.next_page_token == ""

    # Every status event says what changed; the one that finished the job carries the
    # notification, exactly as listed.
    nc = await jetstream.connect(deps.nats_url, "test-notifications")
    try:
        events = await events_of(nc.jetstream(), job.id)
    finally:
        await nc.close()
    types = [e.type for e in events]
    assert types[0] == "job.queued" and types[-1] == "job.succeeded"
    assert "job.running" in types
    assert set(types) <= {"job.queued", "job.running", "job.progress", "job.succeeded"}
    assert events[-1].notification == notification
    assert not any(e.HasField("notification") for e in events[:-1])


async def test_a_failed_job_says_why(
    clients: Clients, inbox: NotificationServiceStub, stack: Services
) -> None:
    who = someone(clients)
    with workers_paused(stack):
        job = await create(clients, who, video=job_pb2.VideoParams(prompt="blocked"))
        claimed = await clients.workers.ClaimJob(
            worker_service_pb2.ClaimJobRequest(job_id=job.id), metadata=clients.worker
        )
        failure = worker_service_pb2.JobFailure(
            code=job_pb2.ERROR_CODE_SAFETY_BLOCKED, message="the output was filtered"
        )
        complete = worker_service_pb2.CompleteJobRequest(
            job_id=job.id, attempt=claimed.job.attempt, failure=failure
        )
        await clients.workers.CompleteJob(complete, metadata=clients.worker)
        # A repeat of the same result changes nothing, and leaves nothing more.
        await clients.workers.CompleteJob(complete, metadata=clients.worker)
    [notification] = (await listed(inbox, who)).notifications
    assert (notification.type, notification.title, notification.message) == (
        "job.failed",
        "Video failed",
        "blocked by safety filters",
    )


async def test_list_pages_filters_and_counts(
    clients: Clients, inbox: NotificationServiceStub, stack: Services
) -> None:
    who = someone(clients)
    with workers_paused(stack):
        ids = await canceled_jobs(clients, who, 3)
    everything = await listed(inbox, who)
    assert [n.job_id for n in everything.notifications] == ids[::-1]  # newest first
    assert all(
        (n.type, n.title, n.message) == ("job.canceled", "Image canceled", "canceled by the owner")
        for n in everything.notifications
    )
    assert everything.unread_count == 3
    first = await listed(inbox, who, page_size=2)
    assert [n.job_id for n in first.notifications] == [ids[2], ids[1]]
    assert first.unread_count == 3 and first.next_page_token
    rest = await listed(inbox, who, page_size=2, page_token=first.next_page_token)
    assert [n.job_id for n in rest.notifications] == [ids[0]] and rest.next_page_token == ""

    newest = everything.notifications[0]
    marked = await inbox.MarkNotificationsRead(
        pb.MarkNotificationsReadRequest(notification_ids=[newest.id, newest.id]), metadata=who
    )
    assert (marked.marked, marked.unread_count) == (1, 2)
    again = await inbox.MarkNotificationsRead(
        pb.MarkNotificationsReadRequest(notification_ids=[newest.id]), metadata=who
    )
    assert (again.marked, again.unread_count) == (0, 2)
    unread = await listed(inbox, who, unread_only=True)
    assert [n.job_id for n in unread.notifications] == [ids[1], ids[0]]
    assert unread.unread_count == 2
    read = (await listed(inbox, who)).notifications
    assert [n.read for n in read] == [True, False, False]
    # A token of the unfiltered list does not continue the unread one.
    error = await _refused(
        inbox.ListNotifications,
        pb.ListNotificationsRequest(unread_only=True, page_token=first.next_page_token),
        who,
    )
    assert field_violations(error)[0][0] == "page_token"

    everything_read = await inbox.MarkNotificationsRead(
        pb.MarkNotificationsReadRequest(all=True), metadata=who
    )
    assert (everything_read.marked, everything_read.unread_count) == (2, 0)
    assert list((await listed(inbox, who, unread_only=True)).notifications) == []
    assert (await listed(inbox, who)).unread_count == 0


async def _refused(call: object, request: object, who: Metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=who)  # type: ignore[operator]
    return caught.value


async def test_bad_requests_name_the_field(
    clients: Clients, inbox: NotificationServiceStub
) -> None:
    who = someone(clients)
    M = pb.MarkNotificationsReadRequest
    some = str(uuid7())
    cases: Sequence[tuple[object, object, str]] = [
        (inbox.MarkNotificationsRead, M(), "notification_ids"),
        (inbox.MarkNotificationsRead, M(all=True, notification_ids=[some]), "notification_ids"),
        (inbox.MarkNotificationsRead, M(notification_ids=[some] * 101), "notification_ids"),
        (inbox.MarkNotificationsRead, M(notification_ids=[some, "nope"]), "notification_ids[1]"),
        (inbox.ListNotifications, pb.ListNotificationsRequest(page_size=-1), "page_size"),
        (inbox.ListNotifications, pb.ListNotificationsRequest(page_token="x!"), "page_token"),
    ]
    for call, request, field in cases:
        error = await _refused(call, request, who)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert [f for f, _ in field_violations(error)] == [field], request


async def test_another_users_notifications_are_not_theirs(
    clients: Clients, inbox: NotificationServiceStub, stack: Services
) -> None:
    owner, other = someone(clients), someone(clients)
    with workers_paused(stack):
        await canceled_jobs(clients, owner, 1)
    [mine] = (await listed(inbox, owner)).notifications
    theirs = await listed(inbox, other)
    assert list(theirs.notifications) == [] and theirs.unread_count == 0
    unknown = str(uuid7())
    error = await _refused(
        inbox.MarkNotificationsRead,
        pb.MarkNotificationsReadRequest(notification_ids=[unknown, mine.id]),
        other,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert unknown in (error.details() or "")
    error = await _refused(
        inbox.MarkNotificationsRead,
        pb.MarkNotificationsReadRequest(notification_ids=[mine.id]),
        other,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and mine.id in (error.details() or "")
    everything = await inbox.MarkNotificationsRead(
        pb.MarkNotificationsReadRequest(all=True), metadata=other
    )
    assert (everything.marked, everything.unread_count) == (0, 0)
    # The owner's is still unread: nothing the other user did touched it.
    still = await listed(inbox, owner)
    assert [n.read for n in still.notifications] == [False] and still.unread_count == 1
    # And a partly unknown list marks nothing, even of the caller's own.
    error = await _refused(
        inbox.MarkNotificationsRead,
        pb.MarkNotificationsReadRequest(notification_ids=[mine.id, unknown]),
        owner,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await listed(inbox, owner)).unread_count == 1


# --- retention (the sweeper) --------------------------------------------------------------

RETENTION_SECONDS = 3600.0
PER_ROUND = 2
SEALER = Sealer([Sealer.new_key()])


async def test_the_sweeper_forgets_old_notifications_deliveries_and_job_endpoints(
    deps: Dependencies,
) -> None:
    """A Sweeper of the test's own, on a database and bucket of their own, with a retention of an
    hour: rows older than it go (at most PER_ROUND per table and round); younger ones, pending
    deliveries and the endpoints of unfinished jobs or of the user's own stay."""
    name = f"retention_{uuid.uuid4().hex[:8]}"
    database_url = await asyncio.to_thread(deps.create_database, name)
    await asyncio.to_thread(migrate.upgrade, database_url)
    bucket = name.replace("_", "-")
    s3 = deps.s3_client()
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    engine = sa.create_engine(database_url)
    old, young = "now() - interval '2 hours'", "now() - interval '10 minutes'"
    finished_job, running_job = uuid7(), uuid7()
    endpoint = {
        "owner": "keeper",
        "url": "https://93.184.215.14/hook",
        "event_types": ["job.succeeded"],
        "secret": "whsec_x",
    }

    def setup() -> dict[str, list[uuid.UUID]]:
        made: dict[str, list[uuid.UUID]] = {}
        with engine.begin() as conn:
            for job_id, status in ((finished_job, SUCCEEDED), (running_job, RUNNING)):
                conn.execute(
                    sa.insert(jobs).values(
                        id=job_id,
                        owner="keeper",
                        kind=IMAGE,
                        status=status,
                        params=b"",
                        finished_at=sa.text(old) if job_id == finished_job else None,
                    )
                )

            def add(table: sa.Table, key: str, when: str, **values: object) -> None:
                row_id = uuid7()
                conn.execute(sa.insert(table).values(id=row_id, created_at=sa.text(when), **values))
                made.setdefault(key, []).append(row_id)

            note = {"owner": "keeper", "job_id": finished_job, "type": "job.succeeded"}
            for _ in range(3):
                add(notifications, "old notes", old, title="t", message="m", **note)
            add(notifications, "young notes", young, title="t", message="m", **note)
            add(webhook_endpoints, "old job endpoint", old, job_id=finished_job, **endpoint)
            add(webhook_endpoints, "unfinished job endpoint", old, job_id=running_job, **endpoint)
            add(webhook_endpoints, "own endpoint", old, **endpoint)
            target = made["own endpoint"][0]
            delivery = {
                "endpoint_id": target,
                "event_type": "job.succeeded",
                "job_id": finished_job,
                "job_version": 3,
                "event": b"",
            }
            states = webhook_service_pb2
            for _ in range(3):
                add(
                    webhook_deliveries,
                    "old finished deliveries",
                    old,
                    event_id=uuid7(),
                    state=states.DELIVERY_STATE_SUCCEEDED,
                    **delivery,
                )
            add(
                webhook_deliveries,
                "old pending delivery",
                old,
                event_id=uuid7(),
                state=states.DELIVERY_STATE_PENDING,
                **delivery,
            )
            add(
                webhook_deliveries,
                "young delivery",
                young,
                event_id=uuid7(),
                state=states.DELIVERY_STATE_FAILED,
                **delivery,
            )
        return made

    def remaining() -> set[uuid.UUID]:
        with engine.connect() as conn:
            return {
                row_id
                for table in (notifications, webhook_endpoints, webhook_deliveries)
                for row_id in conn.execute(sa.select(table.c.id)).scalars()
            }

    made = await asyncio.to_thread(setup)
    settings = SweepSettings(
        interval_seconds=1,
        max_per_round=PER_ROUND,
        notification_retention_seconds=RETENTION_SECONDS,
        webhook_delivery_retention_seconds=RETENTION_SECONDS,
    )
    sweeper = Sweeper(sweeper_engine(database_url), s3, bucket, settings, SEALER)
    try:
        everything = set().union(*made.values())
        assert await sweeper.sweep_once() is not None
        after_one = await asyncio.to_thread(remaining)
        # Bounded: of three old notifications and three old deliveries, two of each went.
        assert len(set(made["old notes"]) & after_one) == 1
        assert len(set(made["old finished deliveries"]) & after_one) == 1
        assert set(made["old job endpoint"]) & after_one == set()
        await sweeper.sweep_once()
        kept = {
            *made["young notes"],
            *made["unfinished job endpoint"],
            *made["own endpoint"],
            *made["old pending delivery"],
            *made["young delivery"],
        }
        assert await asyncio.to_thread(remaining) == kept
        assert kept < everything
    finally:
        await sweeper.stop()
        engine.dispose()
