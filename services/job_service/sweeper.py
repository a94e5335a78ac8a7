"""The sweeper: deletes what the bucket keeps that no job needs any more, forgets rows past their
retention, and seals webhook secrets again with the first key of WEBHOOK_SECRETS_KEYS.

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

Then rows past their retention, each table bounded by SWEEP_MAX_PER_ROUND: the records of
uploads past the grace, notifications older than NOTIFICATION_RETENTION_SECONDS, webhook
deliveries no longer pending older than WEBHOOK_DELIVERY_RETENTION_SECONDS, and the one-off
webhook endpoints of finished jobs created before that.

Last, up to SWEEP_MAX_PER_ROUND endpoints whose secrets another key sealed (sealed_with) are
sealed with the first key, and media_webhook_secrets_to_reseal counts those left: once it is 0 the
other keys can be dropped. A secret no key opens is left as it is, and counted.

Listings resume where the previous round stopped (table sweep_cursors), so a bucket larger than
one round is covered pass by pass. Here are the rounds (S3 listing and deleting, in order with the
SQL): what goes and why is sweep_rules.py's, without I/O, and the SQL is sweep_queries.py's. Keys
are built and recognised through services.common.keys only; a new kind of key must be taught to
sweep_rules.py before anything writes it, or it counts as an orphan.

The sweeper has a database connection of its own (opened per round: closing it releases the
lock whatever happened), its own S3 connections and a two-thread bulkhead, so it never waits for
request traffic nor makes requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from sqlalchemy import Connection, Engine

from services.common import keys
from services.common.bulkhead import Bulkhead
from services.common.sealing import Sealer, Unsealable
from services.common.tasks import every
from services.job_service import metrics
from services.job_service.metrics import SweepReason
from services.job_service.settings import SweepSettings
from services.job_service.sweep_queries import (
    Resealed,
    SealedSecrets,
    count_to_reseal,
    due_inputs,
    expire_deliveries,
    expire_job_endpoints,
    expire_notifications,
    expire_uploads,
    job_facts,
    mark_swept,
    save_cursor,
    saved_cursor,
    secrets_to_reseal,
    store_resealed,
    try_lock,
)
from services.job_service.sweep_rules import Swept, job_of, verdict

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
# A listing page or a DeleteObjects of 1000 keys, with the client's retries; a call that takes
# longer is given up (its thread keeps a permit until it returns).
S3_TIMEOUT_SECONDS = 120.0

# Picks, among objects past the grace, the keys to delete and why.
_Chooser = Callable[[Connection, list["ObjectTypeDef"]], Awaitable[list[tuple[str, SweepReason]]]]


class Sweeper:
    def __init__(
        self,
        engine: Engine,
        s3: S3Client,
        bucket: str,
        settings: SweepSettings,
        sealer: Sealer,
    ) -> None:
        self._engine = engine
        self._s3 = s3
        self._bucket = bucket
        self._settings = settings
        self._sealer = sealer
        # Where the next round's resealing goes on: past the secrets no key opens, which stay.
        self._reseal_after: uuid.UUID | None = None
        self._s3_threads = Bulkhead("sweep-s3", 2, S3_TIMEOUT_SECONDS)
        # One thread: the round's connection is used by one thread only.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-db")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._settings.interval_seconds > 0:
            # A failure is logged once per outage; the rounds counter shows how long it lasts.
            self._task = asyncio.create_task(
                every(self._settings.interval_seconds, self._round, "sweeping", log),
                name="sweeper",
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Not longer: a call stuck in a thread must not hold up the shutdown (Postgres drops
            # the lock with the connection when the process ends).
            await asyncio.wait([self._task], timeout=5)
        self._s3_threads.shutdown()
        self._db.shutdown(wait=False, cancel_futures=True)
        self._engine.dispose()

    async def _round(self) -> None:
        try:
            swept = await self.sweep_once()
        except Exception:
            metrics.sweep_round("failed")
            raise
        metrics.sweep_round("skipped" if swept is None else "swept")

    async def sweep_once(self) -> Swept | None:
        """One round; None when another replica holds the lock (this one then does nothing)."""
        conn = await self._in_db(self._engine.connect)
        try:
            if not await self._in_db(try_lock, conn):
                return None
            swept = Swept()
            await self._sweep_inputs(conn, swept)
            await self._sweep_listing(conn, keys.JOBS_PREFIX, self._orphans, swept)
            await self._sweep_listing(conn, keys.UPLOADS_PREFIX, self._stale_uploads, swept)
            await self._expire_rows(conn)
            await self._reseal_secrets(conn)
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

    async def _expire_rows(self, conn: Connection) -> None:
        settings = self._settings
        delivery_retention = settings.webhook_delivery_retention_seconds
        passes = (
            (expire_uploads, settings.grace_seconds, "upload record(s) past the grace"),
            (expire_notifications, settings.notification_retention_seconds, "notification(s)"),
            (expire_deliveries, delivery_retention, "webhook delivery(ies)"),
            (expire_job_endpoints, delivery_retention, "one-off webhook endpoint(s)"),
        )
        for expire, retention, what in passes:
            expired = await self._in_db(expire, conn, retention, settings.max_per_round)
            if expired:
                log.info("forgot %d %s", expired, what)

    async def _reseal_secrets(self, conn: Connection) -> None:
        key_id = self._sealer.key_id
        left = self._settings.max_per_round
        resealed = unopened = 0
        while left > 0:
            size = min(left, BATCH)
            found = await self._in_db(secrets_to_reseal, conn, key_id, self._reseal_after, size)
            left -= len(found)
            done = [now for was in found if (now := self._resealed(was)) is not None]
            await self._in_db(store_resealed, conn, key_id, done)
            resealed += len(done)
            unopened += len(found) - len(done)
            if len(found) < size:
                self._reseal_after = None  # the end: the next round starts over
                break
            self._reseal_after = found[-1].endpoint_id
        if resealed:
            log.info("sealed %d webhook endpoint(s)' secrets with the first key", resealed)
        if unopened:
            log.warning(
                "no key of WEBHOOK_SECRETS_KEYS opens the secrets of %d webhook endpoint(s): "
                "their deliveries fail until the key is back or the secrets are rotated",
                unopened,
            )
        metrics.SECRETS_TO_RESEAL.set(await self._in_db(count_to_reseal, conn, key_id))

    def _resealed(self, was: SealedSecrets) -> Resealed | None:
        """The secrets sealed with the first key; None when no key opens the current one (a
        previous one that no longer signs, or that no key opens, is dropped)."""
        try:
            secret = self._sealer.reseal(was.secret)
        except Unsealable:
            return None
        previous = None
        if was.previous is not None and was.previous_signs:
            with contextlib.suppress(Unsealable):
                previous = self._sealer.reseal(was.previous)
        return Resealed(was, secret, previous)

    async def _sweep_inputs(self, conn: Connection, swept: Swept) -> None:
        retention = self._settings.input_retention_seconds
        left = self._settings.max_per_round
        while left > 0:
            due = await self._in_db(due_inputs, conn, retention, min(left, BATCH))
            left -= len(due)
            with_input = [keys.input_key(str(job_id)) for job_id, has_input in due if has_input]
            failed = await self._delete(with_input, "input", swept)
            await self._in_db(
                mark_swept,
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
        start_after = await self._in_db(saved_cursor, conn, prefix)
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
        await self._in_db(save_cursor, conn, prefix, start_after)

    async def _orphans(
        self, conn: Connection, objects: list[ObjectTypeDef]
    ) -> list[tuple[str, SweepReason]]:
        object_keys = [item["Key"] for item in objects]
        job_ids = sorted({job_id for key in object_keys if (job_id := job_of(key)) is not None})
        facts = (
            await self._in_db(
                job_facts,
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


def _next_page(
    pages: Iterator[ListObjectsV2OutputTypeDef],
) -> ListObjectsV2OutputTypeDef | None:
    return next(pages, None)
