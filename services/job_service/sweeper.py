"""The sweeper: deletes what the bucket keeps that no job needs any more.

Every SWEEP_INTERVAL_SECONDS each replica tries a round; the one that gets a Postgres advisory
lock sweeps and the others skip. A round has three passes, each bounded by SWEEP_MAX_PER_ROUND:

- inputs: the input image of every job that finished more than INPUT_RETENTION_SECONDS ago.
  `jobs.input_swept_at` marks the finished jobs dealt with, and an index holds only the finished
  jobs not yet marked, so a round reads those alone however many jobs the table holds.
- jobs/: every object no job record points to, once older than SWEEP_GRACE_SECONDS (an attempt
  uploads its outputs before CompleteJob records them, and CreateJob stores an input before its
  job row exists): outputs nothing recorded (of a stale, refused or dead attempt, of a job that
  ended without them), whatever is stored under a job ID that has no record (a create that
  failed after storing its image), and anything under a job's prefix that is not a key of the
  layout. Kept whatever their age: a recorded output, the input of an unfinished job (and of a
  finished one within its retention), and the outputs of an active job's current attempt.
- uploads/: presigned uploads older than the grace (CreateJob copies an upload away at once).

Listings resume where the previous round stopped (table sweep_cursors), so a bucket larger than
one round is covered pass by pass. Keys are built and recognised through services.common.keys
only; a new kind of key must be taught here before anything writes it, or it counts as an orphan.

The sweeper has a database connection of its own (opened per round: closing it releases the
lock whatever happened), its own S3 connections and a two-thread bulkhead, so it never waits for
request traffic nor makes requests wait.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    create_engine,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.pool import NullPool

from media.v1 import job_pb2
from services.common import keys, lifecycle
from services.common.bulkhead import Bulkhead
from services.job_service import metrics
from services.job_service.metrics import SweepReason
from services.job_service.schema import INPUT_UNSWEPT_PREDICATE, jobs, outputs, sweep_cursors
from services.job_service.settings import SweepSettings

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import (
        ListObjectsV2OutputTypeDef,
        ListObjectsV2RequestPaginateTypeDef,
        ObjectTypeDef,
    )

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# DeleteObjects takes at most 1000 keys, and a listing page holds at most 1000.
BATCH = 1000
# Two 32-bit keys: that key space never meets the single 64-bit keys of the migrations' lock and
# the per-owner locks of CreateJob. Any constants do, as long as every replica uses the same.
LOCK_KEYS = (7221, 5)
# A listing page or a DeleteObjects of 1000 keys, with the client's retries; a call that takes
# longer is given up (its thread keeps a permit until it returns).
S3_TIMEOUT_SECONDS = 120.0

_SECOND: ColumnElement[dt.timedelta] = literal_column("interval '1 second'")


# --- what goes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """What the database says of a job that objects are stored for."""

    active: bool
    attempt: int
    input_due: bool  # finished more than INPUT_RETENTION_SECONDS ago
    outputs: frozenset[str] = frozenset()  # its recorded output keys in this bucket


def job_of(key: str) -> uuid.UUID | None:
    """The job whose prefix `key` is under, or None when its first segment names no job ID in
    the spelling job_prefix gives one."""
    if not key.startswith(keys.JOBS_PREFIX):
        return None
    segment = key[len(keys.JOBS_PREFIX) :].partition("/")[0]
    try:
        job_id = uuid.UUID(segment)
    except ValueError:
        return None
    return job_id if key.startswith(keys.job_prefix(str(job_id))) else None


def verdict(key: str, job: JobFacts | None) -> SweepReason | None:
    """Why `key`, an object under jobs/ older than the grace, goes (None: it stays). `job` is
    what the database knows of the job whose prefix the key is under (None: no such job)."""
    if job is None:
        return "orphan"  # no record can point to it
    job_id = job_of(key)
    if job_id is not None and key == keys.input_key(str(job_id)):
        return "input" if job.input_due and not job.active else None
    output = keys.parse_output_key(key)
    if output is None:
        return "orphan"  # under a job's prefix, but no key of the layout
    if key in job.outputs:
        return None
    if job.active and output.attempt >= job.attempt:
        return None  # the running attempt's uploads, which CompleteJob has yet to record
    return "orphan"


@dataclass
class Swept:
    """What one round deleted, by reason."""

    counts: dict[SweepReason, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --- the database side (run on the sweeper's own thread and connection) ----------------------


def sweeper_engine(database_url: str) -> Engine:
    """One connection per round, really closed after it (NullPool), so the advisory lock goes
    with it even when the round failed half-way; autocommit: no statement waits in an open
    transaction while S3 answers."""
    return create_engine(
        database_url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={
            "connect_timeout": 5,
            "options": "-c statement_timeout=15000 -c lock_timeout=5000",
            "application_name": "job_service-sweeper",
        },
    )


def _try_lock(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": LOCK_KEYS[0], "b": LOCK_KEYS[1]}
        ).scalar_one()
    )


def _older_than(column: ColumnElement[dt.datetime], seconds: float) -> ColumnElement[bool]:
    return column <= func.statement_timestamp() - seconds * _SECOND


def _has_input(kind: int, params: bytes) -> bool:
    message: job_pb2.ImageParams | job_pb2.VideoParams = (
        job_pb2.ImageParams() if kind == lifecycle.IMAGE else job_pb2.VideoParams()
    )
    message.ParseFromString(params)
    return message.HasField("input_image")


def _due_inputs(
    conn: Connection, retention_seconds: float, limit: int
) -> list[tuple[uuid.UUID, bool]]:
    """The oldest finished jobs past the retention that are not marked yet, each with whether it
    has an input image."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.kind, jobs.c.params)
        .where(
            text(INPUT_UNSWEPT_PREDICATE),  # spelled as the index's predicate, which it uses
            _older_than(jobs.c.finished_at, retention_seconds),
        )
        .order_by(jobs.c.finished_at)
        .limit(limit)
    ).all()
    return [(row.id, _has_input(row.kind, row.params)) for row in rows]


def _mark_swept(conn: Connection, job_ids: Sequence[uuid.UUID]) -> None:
    if job_ids:
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(job_ids))
            .values(input_swept_at=func.statement_timestamp())
        )


def _job_facts(
    conn: Connection, job_ids: Sequence[uuid.UUID], bucket: str, retention_seconds: float
) -> dict[uuid.UUID, JobFacts]:
    # Jobs before outputs: a job read as active keeps its current attempt's uploads, and a job
    # read as finished has its outputs recorded already (both are written in one transaction),
    # so no interleaving lets a recorded output look unrecorded.
    found = conn.execute(
        select(
            jobs.c.id,
            jobs.c.status,
            jobs.c.attempt,
            and_(
                jobs.c.finished_at.is_not(None),
                _older_than(jobs.c.finished_at, retention_seconds),
            ).label("input_due"),
        ).where(jobs.c.id.in_(job_ids))
    ).all()
    recorded: dict[uuid.UUID, set[str]] = defaultdict(set)
    for row in conn.execute(
        select(outputs.c.job_id, outputs.c.key).where(
            outputs.c.job_id.in_(job_ids), outputs.c.bucket == bucket
        )
    ):
        recorded[row.job_id].add(row.key)
    return {
        row.id: JobFacts(
            active=row.status in lifecycle.ACTIVE,
            attempt=row.attempt,
            input_due=bool(row.input_due),
            outputs=frozenset(recorded[row.id]),
        )
        for row in found
    }


def _cursor(conn: Connection, prefix: str) -> str:
    found = conn.execute(
        select(sweep_cursors.c.start_after).where(sweep_cursors.c.prefix == prefix)
    ).scalar_one_or_none()
    return found or ""


def _save_cursor(conn: Connection, prefix: str, start_after: str) -> None:
    insert = pg_insert(sweep_cursors).values(
        prefix=prefix, start_after=start_after, updated_at=func.statement_timestamp()
    )
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[sweep_cursors.c.prefix],
            set_={
                "start_after": insert.excluded.start_after,
                "updated_at": insert.excluded.updated_at,
            },
        )
    )


def _next_page(
    pages: Iterator[ListObjectsV2OutputTypeDef],
) -> ListObjectsV2OutputTypeDef | None:
    return next(pages, None)


# --- the rounds ------------------------------------------------------------------------------

# Picks, among objects past the grace, the keys to delete and why.
_Chooser = Callable[[Connection, list["ObjectTypeDef"]], Awaitable[list[tuple[str, SweepReason]]]]


class Sweeper:
    def __init__(self, engine: Engine, s3: S3Client, bucket: str, settings: SweepSettings) -> None:
        self._engine = engine
        self._s3 = s3
        self._bucket = bucket
        self._settings = settings
        self._s3_threads = Bulkhead("sweep-s3", 2, S3_TIMEOUT_SECONDS)
        # One thread: the round's connection is used by one thread only.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-db")
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._settings.interval_seconds > 0:
            self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Not longer: a call stuck in a thread must not hold up the shutdown (Postgres drops
            # the lock with the connection when the process ends).
            await asyncio.wait([self._task], timeout=5)
        self._s3_threads.shutdown()
        self._db.shutdown(wait=False, cancel_futures=True)
        self._engine.dispose()

    async def _loop(self) -> None:
        while True:
            try:
                swept = await self.sweep_once()
                metrics.sweep_round("skipped" if swept is None else "swept")
                if self._failing:
                    log.info("sweeping recovered")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.sweep_round("failed")
                # Once per outage; the rounds counter shows how long it lasts.
                if not self._failing:
                    log.warning("sweeping failed: %s", exc)
                self._failing = True
            await asyncio.sleep(self._settings.interval_seconds)

    async def sweep_once(self) -> Swept | None:
        """One round; None when another replica holds the lock (this one then does nothing)."""
        conn = await self._in_db(self._engine.connect)
        try:
            if not await self._in_db(_try_lock, conn):
                return None
            swept = Swept()
            await self._sweep_inputs(conn, swept)
            await self._sweep_listing(conn, keys.JOBS_PREFIX, self._orphans, swept)
            await self._sweep_listing(conn, keys.UPLOADS_PREFIX, self._stale_uploads, swept)
        finally:
            # Closes the connection, and with it the session's advisory lock.
            await self._in_db(conn.close)
        if swept.total:
            log.info(
                "swept %d object(s): %s",
                swept.total,
                ", ".join(f"{n} {reason}" for reason, n in sorted(swept.counts.items()) if n),
            )
        return swept

    async def _sweep_inputs(self, conn: Connection, swept: Swept) -> None:
        retention = self._settings.input_retention_seconds
        left = self._settings.max_per_round
        while left > 0:
            due = await self._in_db(_due_inputs, conn, retention, min(left, BATCH))
            left -= len(due)
            with_input = [keys.input_key(str(job_id)) for job_id, has_input in due if has_input]
            failed = await self._delete(with_input, "input", swept)
            await self._in_db(
                _mark_swept,
                conn,
                [job_id for job_id, _ in due if keys.input_key(str(job_id)) not in failed],
            )
            if failed or len(due) < BATCH:
                return  # done; or failing, and the next round tries those again

    async def _sweep_listing(
        self, conn: Connection, prefix: str, choose: _Chooser, swept: Swept
    ) -> None:
        """Pages through `prefix` from where the previous round stopped, deleting what `choose`
        picks among the objects older than the grace, until max_per_round objects were listed."""
        start_after = await self._in_db(_cursor, conn, prefix)
        request: ListObjectsV2RequestPaginateTypeDef = {
            "Bucket": self._bucket,
            "Prefix": prefix,
            # Pages no larger than the round's bound, which is then exceeded by less than one page.
            "PaginationConfig": {"PageSize": min(BATCH, self._settings.max_per_round)},
        }
        if start_after:
            request["StartAfter"] = start_after
        pages = iter(self._s3.get_paginator("list_objects_v2").paginate(**request))
        listed = 0
        while listed < self._settings.max_per_round:
            page = await self._s3_threads.run(_next_page, pages)
            contents = page.get("Contents", []) if page is not None else []
            listed += len(contents)
            if contents:
                cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(
                    seconds=self._settings.grace_seconds
                )
                old = [item for item in contents if item["LastModified"] <= cutoff]
                chosen = await choose(conn, old) if old else []
                for reason in metrics.SWEEP_REASONS:
                    await self._delete([k for k, why in chosen if why == reason], reason, swept)
                start_after = contents[-1]["Key"]
            if page is None or not page.get("IsTruncated"):
                start_after = ""  # the end: the next round starts over
                break
        await self._in_db(_save_cursor, conn, prefix, start_after)

    async def _orphans(
        self, conn: Connection, objects: list[ObjectTypeDef]
    ) -> list[tuple[str, SweepReason]]:
        object_keys = [item["Key"] for item in objects]
        job_ids = sorted({job_id for key in object_keys if (job_id := job_of(key)) is not None})
        facts = (
            await self._in_db(
                _job_facts,
                conn,
                job_ids,
                self._bucket,
                self._settings.input_retention_seconds,
            )
            if job_ids
            else {}
        )
        chosen: list[tuple[str, SweepReason]] = []
        for key in object_keys:
            job_id = job_of(key)
            reason = verdict(key, facts.get(job_id) if job_id is not None else None)
            if reason is not None:
                chosen.append((key, reason))
        return chosen

    async def _stale_uploads(
        self, _conn: Connection, objects: list[ObjectTypeDef]
    ) -> list[tuple[str, SweepReason]]:
        return [(item["Key"], "upload") for item in objects]

    async def _delete(
        self, object_keys: Sequence[str], reason: SweepReason, swept: Swept
    ) -> set[str]:
        """Deletes the keys, BATCH at a time; the keys S3 did not delete."""
        failed: set[str] = set()
        for start in range(0, len(object_keys), BATCH):
            chunk = object_keys[start : start + BATCH]
            answer = await self._s3_threads.run(
                self._s3.delete_objects,
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
            )
            errors = answer.get("Errors", [])
            failed |= {error.get("Key", "") for error in errors}
            deleted = len(chunk) - len(errors)
            swept.counts[reason] += deleted
            metrics.objects_swept(reason, deleted)
            if errors:
                first = errors[0]
                log.warning(
                    "could not delete %d of %d %s object(s): %s %s",
                    len(errors),
                    len(chunk),
                    reason,
                    first.get("Code", ""),
                    first.get("Message", ""),
                )
        return failed

    async def _in_db(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)
