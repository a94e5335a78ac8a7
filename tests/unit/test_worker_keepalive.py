"""The one keep-alive of a held message (keepalive.py): periodic on its own, and rate-limited
however often the generator asks."""

from __future__ import annotations

import asyncio
import time

from services.media_worker.keepalive import MIN_GAP_SECONDS, KeepAlive


class Msg:
    def __init__(self) -> None:
        self.sent: list[float] = []
        self.any_sent = asyncio.Event()

    async def in_progress(self) -> None:
        self.sent.append(time.monotonic())
        self.any_sent.set()


async def test_the_generator_asking_often_sends_at_most_one_per_gap() -> None:
    msg = Msg()
    keep_alive = KeepAlive(msg, ack_wait_seconds=30)  # type: ignore[arg-type]
    try:
        await keep_alive.beat()  # the delivery itself has just started the ack wait
        assert msg.sent == []
        keep_alive._last -= MIN_GAP_SECONDS  # as if a gap had passed
        for _ in range(5):
            await keep_alive.beat()
        assert len(msg.sent) == 1
    finally:
        keep_alive.stop()


async def test_it_beats_on_its_own_within_a_third_of_the_ack_wait() -> None:
    msg = Msg()
    started = time.monotonic()
    keep_alive = KeepAlive(msg, ack_wait_seconds=3)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(30):  # a bound on a hang, not on speed
            await msg.any_sent.wait()
        assert msg.sent[0] - started >= 1.0  # not before it is due
    finally:
        keep_alive.stop()
