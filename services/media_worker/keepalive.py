"""Keeping a held JetStream message from being redelivered while its job runs.

JetStream hands a message to another worker once it has gone `ack_wait` without an ack; an
in-progress ack starts the wait afresh. One `KeepAlive` per message sends them: on its own at
least every third of the ack wait, and whenever the generator asks (its `ctx.keep_alive`, before
and during long waits), but never more often than once a second, however often it is asked.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

log = logging.getLogger(__name__)

MIN_GAP_SECONDS = 1.0


class KeepAlive:
    def __init__(self, msg: Msg, ack_wait_seconds: float) -> None:
        self._msg = msg
        self._period = max(ack_wait_seconds / 3, MIN_GAP_SECONDS)
        # The delivery itself started the ack wait.
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="keep-alive")

    async def beat(self) -> None:
        """An in-progress ack, unless one went out less than MIN_GAP_SECONDS ago. Never raises:
        a lost one is made up by the next, and the job's fate is not the keep-alive's to decide."""
        now = time.monotonic()
        if now - self._last < MIN_GAP_SECONDS:
            return
        self._last = now
        try:
            await self._msg.in_progress()
        except Exception as exc:
            log.warning("in-progress ack failed: %s", exc)

    async def _loop(self) -> None:
        while True:
            # Sleeps past the generator's beats too: they count as the periodic one.
            due = self._last + self._period - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            else:
                await self.beat()

    def stop(self) -> None:
        self._task.cancel()
