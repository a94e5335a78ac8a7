"""Group commit for CreateJob: concurrent creates share one transaction.

One transaction runs at a time. A create that finds none running starts one at once, so a lone
create waits for nothing; creates that arrive while one runs wait for it, and the next takes all
of them together (up to `max_batch`): one INSERT per table and one commit for many jobs. A
transaction's fixed cost (checkout, round trips, commit, SQLAlchemy's own work, all holding the
GIL that the event loop needs) is what limits CreateJob under load, so a single running
transaction with ever larger batches beats several with small ones: measured with 32 creates in
flight, about 860 creates/s against 580 with four transactions at a time.

A create waits at most the database call timeout in all (its turn and its transaction), like
any other call: when the database hangs, one still waiting for its turn is withdrawn, so it is
never written after its caller was told UNAVAILABLE.
"""

from __future__ import annotations

import asyncio

from services.job_service import database
from services.job_service.database import call
from services.job_service.store import Created, NewJob, Store


class CreateBatcher:
    def __init__(self, store: Store, *, max_batch: int = 128) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[NewJob, asyncio.Future[Created]]] = []
        self._running: asyncio.Task[None] | None = None

    async def create(self, new: NewJob) -> Created:
        future: asyncio.Future[Created] = asyncio.get_running_loop().create_future()
        entry = (new, future)
        self._pending.append(entry)
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        timeout = database.call_timeout()
        if timeout is None:
            return await future
        try:
            # shield: a caller that goes away leaves its create to the batch, as before.
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            # Still waiting for its turn: withdrawn. In a transaction already: its outcome is
            # unknown, as with any call given up on (a retry with the request ID is safe).
            self._pending = [e for e in self._pending if e is not entry]
            future.cancel()  # nobody will read it; the batch skips a done future
            raise database.timed_out() from None

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await call(self._store.create_jobs, [new for new, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = None
