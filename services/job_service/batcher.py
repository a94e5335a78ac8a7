"""Group commit for CreateJob: concurrent creates share one transaction.

At low load every create runs at once on its own. When `max_in_flight` transactions are already
running, new creates wait and the next free slot takes all of them together (up to `max_batch`):
one INSERT per table and one commit for many jobs, which is what lets CreateJob keep up under load.
"""

from __future__ import annotations

import asyncio

from services.job_service.database import call
from services.job_service.store import Created, NewJob, Store


class CreateBatcher:
    def __init__(self, store: Store, *, max_batch: int = 128, max_in_flight: int = 4) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[NewJob, asyncio.Future[Created]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, new: NewJob) -> Created:
        future: asyncio.Future[Created] = asyncio.get_running_loop().create_future()
        self._pending.append((new, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

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
            self._in_flight -= 1
