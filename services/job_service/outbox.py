"""The outbox relay: publishes committed outbox rows to JetStream, then deletes them.

Each row is published with its ID as Nats-Msg-Id, so a row published twice (a crash between
publish and delete, or two replicas relaying at once) is stored once by JetStream. The relay wakes
at once after a commit in this process and polls otherwise, which picks up rows left by a crash.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from services.job_service.store import OutboxRow, Store

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, js: JetStreamContext, *, batch: int, poll_seconds: float):
        self._store = store
        self._js = js
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self._done: list[int] = []  # published, to delete with the next read

    def notify(self) -> None:
        """Thread-safe: called by the store after a commit that wrote outbox rows."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Publishes what is pending (best effort), then stops."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            await asyncio.wait_for(self.drain(), timeout=5)
        except Exception as exc:
            log.warning("outbox not drained at shutdown: %s", exc)

    async def drain(self) -> None:
        while await self.relay_once():
            pass
        if self._done:
            await asyncio.to_thread(self._store.outbox_next, self._take_done(), 0)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                # Keep going while full batches come back: we are behind.
                while await self.relay_once() == self._batch:
                    pass
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    async def relay_once(self) -> int:
        """Publishes the next batch; returns how many rows it read."""
        done = self._take_done()
        try:
            rows = await asyncio.to_thread(self._store.outbox_next, done, self._batch)
        except BaseException:
            self._done = done + self._done  # delete them next time instead
            raise
        if not rows:
            return 0
        results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
        self._done = [r.id for r, res in zip(rows, results, strict=True) if res is None]
        self.published += len(self._done)
        failed = [res for res in results if isinstance(res, BaseException)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(rows)} publishes failed: {failed[0]}")
        return len(rows)

    def _take_done(self) -> list[int]:
        done, self._done = self._done, []
        return done

    async def _publish(self, row: OutboxRow) -> None:
        await self._js.publish(
            row.subject, row.payload, timeout=5, headers={"Nats-Msg-Id": str(row.id)}
        )
