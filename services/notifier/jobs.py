"""Reading jobs from job_service (services/common/job_reader.py) once per job for every watcher.

`JobCache` makes every read
single-flight and batched: however many watchers open on one job, one read; however many jobs
need reading at the same moment, a few calls of up to `batch` jobs each. It keeps the owner and
latest state of the jobs that open WatchJob streams hold (the hub feeds it every event, so a
watcher joining or resyncing needs no read) and forgets a job when its last holder leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

from media.v1 import job_pb2
from services.common import lifecycle
from services.common.job_reader import JobReader

log = logging.getLogger(__name__)

Owned = tuple[str, job_pb2.Job]  # (owner, job)


class _Entry:
    """A job that open streams hold: its owner, the newest state known, and the newest signed
    read of it once finished."""

    __slots__ = ("final", "holders", "owner", "reading", "state")

    def __init__(self) -> None:
        self.holders = 0
        self.owner: str | None = None  # None: not read yet
        self.state: job_pb2.Job | None = None  # the newest of the read and every event since
        self.final: job_pb2.Job | None = None
        # The read issued while this entry existed: every event since it went out is observed
        # here, so whoever holds the entry may join it and take `state` afterwards.
        self.reading: asyncio.Future[Owned | None] | None = None


class JobCache:
    def __init__(self, reader: JobReader, *, batch: int = 100) -> None:
        self._reader = reader
        self._batch = batch
        self._entries: dict[str, _Entry] = {}
        self._queued: dict[str, asyncio.Future[Owned | None]] = {}  # to go out in the next batch
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Final reads in flight, by job: (the version they were asked for, the read).
        self._final_reads: dict[str, tuple[int, asyncio.Future[Owned | None]]] = {}
        self._listing: dict[tuple[str, tuple[int, ...]], asyncio.Task[list[job_pb2.Job]]] = {}

    @property
    def size(self) -> int:
        return len(self._entries)

    @contextmanager
    def held(self, job_id: str) -> Iterator[None]:
        """Keeps the job's entry while the caller's stream is open."""
        entry = self._entries.get(job_id)
        if entry is None:
            entry = self._entries[job_id] = _Entry()
        entry.holders += 1
        try:
            yield
        finally:
            entry.holders -= 1
            if entry.holders == 0:
                del self._entries[job_id]

    def observe(self, job: job_pb2.Job) -> None:
        """An event (from the hub): the newest state of a held job."""
        entry = self._entries.get(job.id)
        if entry is not None and (entry.state is None or job.version > entry.state.version):
            entry.state = job

    def latest(self, job_id: str) -> job_pb2.Job | None:
        """The newest state known of a held, read job."""
        entry = self._entries.get(job_id)
        return entry.state if entry is not None else None

    async def owned(self, job_id: str) -> Owned | None:
        """The job's owner and newest known state (None: no such job). One read per job."""
        entry = self._entries.get(job_id)
        if entry is None:  # not held: a plain read
            return await self._read(job_id)
        if entry.owner is None:
            if entry.reading is None or _failed(entry.reading):
                entry.reading = self._pending(job_id)
            # Shielded: a stream that goes away does not cancel the read the others wait for.
            await asyncio.shield(entry.reading)
        if entry.owner is None or entry.state is None:
            return None
        return entry.owner, entry.state

    async def final(self, job_id: str, version: int) -> job_pb2.Job | None:
        """The finished job at `version` or later, with signed URLs (None: no such job). Every
        stream that needs it shares one read: one that went out after the finished event
        reflects it (job_service publishes an event only after its commit)."""
        for _ in range(3):
            entry = self._entries.get(job_id)
            if entry is not None and entry.final is not None and entry.final.version >= version:
                return entry.final
            reading = self._final_reads.get(job_id)
            if reading is None or reading[0] < version or _failed(reading[1]):
                pending = self._pending(job_id)
                reading = self._final_reads[job_id] = (version, pending)
                pending.add_done_callback(partial(self._forget_final_read, job_id))
            found = await asyncio.shield(reading[1])
            if found is None:
                return None
            if found[1].version >= version and found[1].status in lifecycle.FINISHED:
                return found[1]
            # Older than the event (a replica lagging behind?): once more, with a new read.
            self._final_reads.pop(job_id, None)
        log.warning(
            "job service returned an older state than a finished event",
            extra={"job_id": job_id, "version": version},
        )
        return None

    def _forget_final_read(self, job_id: str, done: asyncio.Future[Owned | None]) -> None:
        reading = self._final_reads.get(job_id)
        if reading is not None and reading[1] is done:
            del self._final_reads[job_id]

    async def list_active(self, owner: str, kinds: Sequence[int]) -> list[job_pb2.Job]:
        """The owner's unfinished jobs; feeds opening at the same moment share one call."""
        key = (owner, tuple(sorted(set(kinds))))
        task = self._listing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._reader.list_active(owner, key[1]))
            self._listing[key] = task
            task.add_done_callback(lambda _: self._listing.pop(key, None))
        # Shielded: a stream that goes away does not cancel the call the others wait for.
        return list(await asyncio.shield(task))

    # --- single-flight, batched reads -------------------------------------------------------

    async def _read(self, job_id: str) -> Owned | None:
        # Shielded: a stream that goes away does not cancel the read the others wait for.
        return await asyncio.shield(self._pending(job_id))

    def _pending(self, job_id: str) -> asyncio.Future[Owned | None]:
        pending = self._queued.get(job_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._queued[job_id] = pending
            if not self._flush_scheduled:
                # Everything asked for in this turn of the loop goes out together.
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return pending

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        ids = list(queued)
        for start in range(0, len(ids), self._batch):
            chunk = {i: queued[i] for i in ids[start : start + self._batch]}
            task = asyncio.get_running_loop().create_task(self._send(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, chunk: dict[str, asyncio.Future[Owned | None]]) -> None:
        try:
            found = await self._reader.read(list(chunk))
        except Exception as exc:
            for future in chunk.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # its waiters may have gone: no "never retrieved"
            return
        except BaseException:
            for future in chunk.values():
                future.cancel()
            raise
        by_id = {owned.job.id: (owned.owner, owned.job) for owned in found}
        for job_id, future in chunk.items():
            result = by_id.get(job_id)
            if result is not None:
                self._remember(*result)
            if not future.done():
                future.set_result(result)

    def _remember(self, owner: str, job: job_pb2.Job) -> None:
        entry = self._entries.get(job.id)
        if entry is None:
            return  # nobody holds it: memory is only for open streams
        entry.owner = owner
        if entry.state is None or job.version >= entry.state.version:
            entry.state = job
        if job.status in lifecycle.FINISHED:
            if entry.final is None or job.version >= entry.final.version:
                entry.final = job

    async def close(self) -> None:
        tasks = [*self._tasks, *self._listing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _failed(future: asyncio.Future[Owned | None]) -> bool:
    """A read that ended without an answer (the next caller tries again)."""
    return future.done() and (future.cancelled() or future.exception() is not None)
