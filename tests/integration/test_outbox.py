"""The outbox on real Postgres and JetStream: what commits is published even when the process
that wrote it never got to publish, a re-publish is stored once, and attempts are bounded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig, DeliverPolicy

from media.v1 import events_pb2, job_pb2
from services.common import jetstream
from services.common.ids import uuid7
from services.common.lifecycle import Reason, Refused
from services.job_service import migrate
from services.job_service.database import make_engine
from services.job_service.outbox import OutboxRelay, OutboxRow, outbox_next
from services.job_service.store import NewJob, Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(deps):  # type: ignore[no-untyped-def]
    # A database of its own: the session's running job_service must not relay or claim these.
    name = f"outbox_{uuid.uuid4().hex[:8]}"
    url = deps.create_database(name)
    migrate.upgrade(url)
    made = make_engine(url, 4)
    yield made
    made.dispose()


@pytest_asyncio.fixture
async def js(deps) -> AsyncIterator:  # type: ignore[no-untyped-def]
    nc = await jetstream.connect(deps.nats_url, "test-outbox")
    context = nc.jetstream()
    await jetstream.ensure_streams(context)
    yield context
    await nc.close()


class Lost:
    """An on_commit that drops what it is handed: the process died right after its commit."""

    def __init__(self) -> None:
        self.rows: list[OutboxRow] = []

    def __call__(self, rows: list[OutboxRow]) -> None:
        self.rows.extend(rows)


def new_job(owner: str) -> NewJob:
    return NewJob(
        id=uuid7(),
        owner=owner,
        request_id=None,
        request_digest=b"",
        kind=job_pb2.MEDIA_KIND_IMAGE,
        params=job_pb2.ImageParams(prompt="outbox", size="256x256"),
    )


async def events_of(js, job_id: str) -> list[events_pb2.JobEvent]:  # type: ignore[no-untyped-def]
    sub = await js.subscribe(
        jetstream.job_events(job_id),
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    found = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1)
            event = events_pb2.JobEvent()
            event.ParseFromString(msg.data)
            found.append(event)
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return found


async def test_rows_committed_by_a_dead_process_are_published_by_the_sweep(engine, js) -> None:
    lost = Lost()
    store = Store(engine, max_attempts=3, on_commit=lost)
    [created] = await asyncio.to_thread(store.create_jobs, [new_job("outbox-a")])
    assert created.created and len(lost.rows) == 2  # dispatch + first status event
    # Nothing was published: the writer "died". Another relay's sweep finds the rows.
    relay = OutboxRelay(engine, js, batch=100, poll_seconds=0.01)
    await relay.drain()
    events = await events_of(js, created.job.id)
    assert [e.job.status for e in events] == [job_pb2.JOB_STATUS_QUEUED]
    remaining = await asyncio.to_thread(outbox_next, engine, [], 1000)
    assert all(r.id not in {x.id for x in lost.rows} for r in remaining)


async def test_a_row_published_twice_is_stored_once(engine, js) -> None:
    lost = Lost()
    store = Store(engine, max_attempts=3, on_commit=lost)
    [created] = await asyncio.to_thread(store.create_jobs, [new_job("outbox-b")])
    relay = OutboxRelay(engine, js, batch=100, poll_seconds=0.01)
    event_row = next(r for r in lost.rows if r.subject.startswith("media.events."))
    # The fast path published it, then the process crashed before deleting it; the sweep of
    # another replica publishes it again.
    await relay._publish([event_row], raise_on_failure=True)
    await relay.drain()
    await relay._publish([event_row], raise_on_failure=True)
    events = await events_of(js, created.job.id)
    assert len(events) == 1


async def test_attempts_are_bounded_and_the_failure_is_committed(engine, js) -> None:
    published: list[OutboxRow] = []
    store = Store(engine, max_attempts=2, on_commit=published.extend)
    [created] = await asyncio.to_thread(store.create_jobs, [new_job("outbox-c")])
    job_id = uuid.UUID(created.job.id)
    assert (await asyncio.to_thread(store.claim, job_id)).attempt == 1
    assert (await asyncio.to_thread(store.claim, job_id)).attempt == 2  # a redelivery
    with pytest.raises(Refused) as caught:
        await asyncio.to_thread(store.claim, job_id)
    assert caught.value.refusal.reason is Reason.JOB_FINISHED
    assert caught.value.refusal.status == job_pb2.JOB_STATUS_FAILED
    job = await asyncio.to_thread(store.get_job, job_id, "outbox-c")
    assert job is not None
    assert job.status == job_pb2.JOB_STATUS_FAILED
    assert job.error.code == job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED
    assert "attempts exhausted after 2" in job.error.message
    # The failure's status event was committed with it.
    last = events_pb2.JobEvent()
    last.ParseFromString(published[-1].payload)
    assert last.job.status == job_pb2.JOB_STATUS_FAILED
