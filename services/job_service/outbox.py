"""The outbox: the rows a state change commits with it, and the relay that publishes them to
JetStream, then deletes them.

The store (store.py) queues a change's rows in its transaction and `write_outbox` inserts them
just before the commit. Each row is published with its ID as Nats-Msg-Id, so a row published
twice (a crash between publish and delete, or two replicas relaying the same row) is stored once
by JetStream.

Two paths feed the relay. The fast path: the store hands over the rows of each commit, which are
published at once without reading them back. The sweep: every `poll_seconds` the relay deletes
what it published and reads rows older than `poll_seconds` that are still in the table (left by
a crash, a failed publish or another replica), so nothing committed is ever lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NotRequired, ParamSpec, TypedDict

from nats.js import JetStreamContext
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    delete,
    func,
    insert,
    literal_column,
    select,
)

from services.common import tracing
from services.common.bulkhead import Bulkhead
from services.common.ids import uuid7
from services.job_service.schema import outbox

log = logging.getLogger(__name__)

P = ParamSpec("P")


@dataclass(frozen=True)
class OutboxRow:
    id: uuid.UUID  # UUIDv7, unique across databases: it is the Nats-Msg-Id
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None  # trace context, published as NATS headers


class OutboxValues(TypedDict):
    """An outbox row queued in a transaction; its id is minted when it is inserted."""

    id: NotRequired[uuid.UUID]
    subject: str
    payload: bytes
    headers: dict[str, str] | None


_SECOND: ColumnElement[dt.timedelta] = literal_column("interval '1 second'")
_INSERT_OUTBOX = insert(outbox)  # built once: constructing a statement costs more than executing it


def write_outbox(conn: Connection, rows: list[OutboxValues]) -> list[OutboxRow]:
    """Inserts the rows a transaction queued, in that transaction."""
    if not rows:
        return []
    # The ID is minted here, not by a database sequence: JetStream deduplicates on it, and a
    # sequence restarts with a new database while the stream remembers the old IDs.
    for row in rows:
        row["id"] = uuid7()
    conn.execute(_INSERT_OUTBOX, rows)
    return [OutboxRow(r["id"], r["subject"], r["payload"], r["headers"]) for r in rows]


def outbox_next(
    engine: Engine, published: Sequence[uuid.UUID], limit: int, *, min_age_seconds: float = 0.0
) -> list[OutboxRow]:
    """Deletes the rows already published, then returns the oldest others that are at least
    min_age_seconds old (younger ones are still with the relay of the process that wrote them),
    in one transaction."""
    with engine.begin() as conn:
        if published:
            conn.execute(delete(outbox).where(outbox.c.id.in_(published)))
        if limit <= 0:
            return []
        rows = conn.execute(
            select(outbox.c.id, outbox.c.subject, outbox.c.payload, outbox.c.headers)
            .where(outbox.c.created_at <= func.statement_timestamp() - min_age_seconds * _SECOND)
            .order_by(outbox.c.id)
            .limit(limit)
        ).all()
    return [OutboxRow(r.id, r.subject, r.payload, r.headers) for r in rows]


class OutboxRelay:
    def __init__(
        self,
        engine: Engine,
        js: JetStreamContext,
        *,
        batch: int,
        poll_seconds: float,
        thread: Bulkhead | None = None,
    ):
        self._engine = engine
        # app.py gives the relay a connection and a thread of its own: it works one step at a
        # time, so a hung database holds that one thread, never one a request needs.
        self._thread = thread
        self._js = js
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._fresh: list[OutboxRow] = []  # committed, not yet published
        self._done: list[uuid.UUID] = []  # published, to delete at the next sweep
        self._last_sweep = 0.0
        self.published = 0

    def notify(self, rows: list[OutboxRow]) -> None:
        """Thread-safe: called by the store after a commit that wrote outbox rows."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._take, rows)

    def _take(self, rows: list[OutboxRow]) -> None:
        self._fresh.extend(rows)
        self._wake.set()

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
        """Publishes everything in the table and in hand, whatever its age."""
        await self._publish_fresh()
        await self._sweep(min_age_seconds=0.0)
        await self._delete_done()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._publish_fresh()
                if time.monotonic() - self._last_sweep >= self._poll:
                    await self._sweep(min_age_seconds=self._poll)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish_fresh(self) -> None:
        while self._fresh:
            rows, self._fresh = self._fresh[: self._batch], self._fresh[self._batch :]
            # A row whose publish fails stays in the table; the sweep retries it.
            await self._publish(rows, raise_on_failure=False)

    async def _sweep(self, *, min_age_seconds: float) -> None:
        self._last_sweep = time.monotonic()
        while True:
            done = self._take_done()
            try:
                rows = await self._in_thread(
                    outbox_next, self._engine, done, self._batch, min_age_seconds=min_age_seconds
                )
            except BaseException:
                self._done = done + self._done  # delete them next time instead
                raise
            await self._publish(rows, raise_on_failure=True)
            if len(rows) < self._batch:
                return

    async def _delete_done(self) -> None:
        if self._done:
            await self._in_thread(outbox_next, self._engine, self._take_done(), 0)

    async def _in_thread(
        self,
        fn: Callable[P, list[OutboxRow]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> list[OutboxRow]:
        if self._thread is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await self._thread.run(fn, *args, **kwargs)

    async def _publish(self, rows: list[OutboxRow], *, raise_on_failure: bool) -> None:
        if not rows:
            return
        results = await asyncio.gather(
            *(self._publish_one(r) for r in rows), return_exceptions=True
        )
        done = [r.id for r, res in zip(rows, results, strict=True) if res is None]
        self._done.extend(done)
        self.published += len(done)
        failed = [res for res in results if isinstance(res, BaseException)]
        if failed:
            message = f"{len(failed)} of {len(rows)} publishes failed: {failed[0]}"
            if raise_on_failure:
                raise RuntimeError(message)
            log.warning("%s; the sweep will retry them", message)

    async def _publish_one(self, row: OutboxRow) -> None:
        # The trace context stored with the row travels next to the deduplication ID.
        with tracing.producer(row.subject, row.headers) as headers:
            headers["Nats-Msg-Id"] = str(row.id)
            await self._js.publish(row.subject, row.payload, timeout=5, headers=headers)

    @property
    def published_ids(self) -> list[uuid.UUID]:
        """Rows published and not yet deleted (that happens at the next sweep): the metrics
        sampler leaves them out of the outbox backlog."""
        return list(self._done)

    def _take_done(self) -> list[uuid.UUID]:
        done, self._done = self._done, []
        return done
