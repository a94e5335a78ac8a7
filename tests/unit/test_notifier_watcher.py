"""The per-stream buffer of the notifier's event hub: order, filter, lag, close, deadline."""

from __future__ import annotations

import asyncio

from media.v1 import job_pb2
from services.notifier.hub import Change, Signal, Subscriber

JOB_ID = "0190f3a0-0000-7000-8000-000000000001"


def change(version: int, kind: int = job_pb2.MEDIA_KIND_IMAGE) -> Change:
    job = job_pb2.Job(id=JOB_ID, version=version, status=job_pb2.JOB_STATUS_RUNNING)
    job.kind = kind  # type: ignore[assignment]
    return Change(100 + version, job)


async def test_delivers_in_order() -> None:
    subscriber = Subscriber(JOB_ID, limit=4)
    for version in (1, 2, 3):
        assert subscriber.offer(change(version))
    got = [await subscriber.next() for _ in range(3)]
    assert [c.job.version for c in got if isinstance(c, Change)] == [1, 2, 3]
    assert [c.seq for c in got if isinstance(c, Change)] == [101, 102, 103]
    assert subscriber.idle


async def test_next_waits_for_an_offer() -> None:
    subscriber = Subscriber(JOB_ID, limit=4)
    waiting = asyncio.create_task(subscriber.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    subscriber.offer(change(7))
    item = await waiting
    assert isinstance(item, Change) and item.job.version == 7


async def test_next_returns_none_at_the_deadline() -> None:
    subscriber = Subscriber(JOB_ID, limit=4)
    loop = asyncio.get_running_loop()
    assert await subscriber.next(loop.time()) is None  # already due: no wait at all
    subscriber.offer(change(1))
    item = await subscriber.next(loop.time())  # something waiting wins over the deadline
    assert isinstance(item, Change)


async def test_the_filter_keeps_what_it_does_not_accept_out() -> None:
    subscriber = Subscriber(
        "alice", limit=1, accept=lambda job: job.kind == job_pb2.MEDIA_KIND_VIDEO
    )
    for version in range(1, 10):
        assert subscriber.offer(change(version))  # images never fill the buffer
    assert subscriber.idle
    subscriber.offer(change(10, job_pb2.MEDIA_KIND_VIDEO))
    item = await subscriber.next()
    assert isinstance(item, Change) and item.job.version == 10


async def test_overflow_drops_the_buffer_and_signals_lag_once() -> None:
    subscriber = Subscriber(JOB_ID, limit=2)
    assert subscriber.offer(change(1))
    assert subscriber.offer(change(2))
    assert not subscriber.offer(change(3))  # this one made it lag
    assert subscriber.lagging and not subscriber.idle
    assert subscriber.offer(change(4))  # ignored while lagging: the resync covers it
    assert await subscriber.next() is Signal.LAGGED
    assert not subscriber.lagging
    # Buffering resumed as soon as the lag was reported, before the caller resyncs.
    subscriber.offer(change(5))
    item = await subscriber.next()
    assert isinstance(item, Change) and item.job.version == 5


async def test_close_wakes_a_waiting_reader() -> None:
    subscriber = Subscriber(JOB_ID, limit=2)
    waiting = asyncio.create_task(subscriber.next())
    await asyncio.sleep(0)
    subscriber.close()
    assert await waiting is Signal.CLOSED
    assert subscriber.offer(change(2))  # offers after close are ignored
    assert await subscriber.next() is Signal.CLOSED
