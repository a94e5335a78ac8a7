"""The per-watcher buffer of the notifier's event hub: order, lag and close."""

from __future__ import annotations

import asyncio

from media.v1 import job_pb2
from services.notifier.hub import Signal, Watcher

JOB_ID = "0190f3a0-0000-7000-8000-000000000001"


def job(version: int) -> job_pb2.Job:
    return job_pb2.Job(id=JOB_ID, version=version, status=job_pb2.JOB_STATUS_RUNNING)


async def test_delivers_in_order() -> None:
    watcher = Watcher(JOB_ID, limit=4)
    for version in (1, 2, 3):
        assert watcher.offer(job(version))
    got = [await watcher.next() for _ in range(3)]
    assert [j.version for j in got if isinstance(j, job_pb2.Job)] == [1, 2, 3]


async def test_next_waits_for_an_offer() -> None:
    watcher = Watcher(JOB_ID, limit=4)
    waiting = asyncio.create_task(watcher.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    watcher.offer(job(7))
    item = await waiting
    assert isinstance(item, job_pb2.Job) and item.version == 7


async def test_overflow_drops_the_buffer_and_signals_lag_once() -> None:
    watcher = Watcher(JOB_ID, limit=2)
    assert watcher.offer(job(1))
    assert watcher.offer(job(2))
    assert not watcher.offer(job(3))  # this one made it lag
    assert watcher.lagging
    assert watcher.offer(job(4))  # ignored while lagging: the resync covers it
    assert await watcher.next() is Signal.LAGGED
    assert not watcher.lagging
    # Buffering resumed as soon as the lag was reported, before the caller re-reads the job.
    watcher.offer(job(5))
    item = await watcher.next()
    assert isinstance(item, job_pb2.Job) and item.version == 5


async def test_close_wakes_a_waiting_reader() -> None:
    watcher = Watcher(JOB_ID, limit=2)
    watcher.offer(job(1))
    watcher.close()
    assert await watcher.next() is Signal.CLOSED
    waiting = asyncio.create_task(watcher.next())
    assert await waiting is Signal.CLOSED
    assert watcher.offer(job(2))  # offers after close are ignored
    assert await watcher.next() is Signal.CLOSED
