"""NotifierService: WatchJob (one job: its state, then every change, then the end after a finished
state) and WatchJobs (the caller's feed: unfinished jobs, then every change to any of their jobs).

Every stream authenticates first (the bearer token, verified here as job_service verifies it),
then validates, then takes a slot under the stream limits, then registers with the hub before
anything is read, so no change after that read can be missed. Job state comes from the job
cache, which reads each job once for all of its watchers with the notifier's own credential.
Every message carries a cursor; a stream resumed with one gets exactly what it missed, from the
event stream itself (replay.py) and then live. An idle stream gets a heartbeat, and a stream ends
when its token expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Collection

import grpc
import jwt

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import Identity, TokenVerifier, bearer_from_metadata
from services.common.errors import RpcError, invalid_argument, not_found
from services.common.ids import parse_uuid
from services.common.jetstream import job_events, owner_events
from services.notifier.cursor import Cursor, CursorError, Kind, decode, job_hash
from services.notifier.hub import Accept, Change, EventHub, Signal, Subscriber
from services.notifier.jobs import JobCache
from services.notifier.limits import StreamLimits
from services.notifier.replay import Expired, Replayer

log = logging.getLogger(__name__)

SERVICE_NAME = notifier_service_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name

TOKEN_EXPIRED = "token expired; watch again with a fresh token and the last cursor"
FELL_BEHIND = "fell behind; resume with the last cursor"
SHUTTING_DOWN = "notifier is shutting down; watch again with the last cursor"
# A feed's opening snapshot waits at most this long for the events of the jobs it listed that
# changed within the last _SETTLE_RECENT_SECONDS (see NotifierService._settle).
_SETTLE_SECONDS = 5.0
_SETTLE_RECENT_SECONDS = 30.0
_KINDS = frozenset(lifecycle.KINDS_BY_NAME.values())
_STATUSES = frozenset(s for s in job_pb2.JobStatus.values() if s)

WatchJobContext = grpc.aio.ServicerContext[
    notifier_service_pb2.WatchJobRequest, notifier_service_pb2.WatchJobResponse
]
WatchJobsContext = grpc.aio.ServicerContext[
    notifier_service_pb2.WatchJobsRequest, notifier_service_pb2.WatchJobsResponse
]


def is_terminal(job: job_pb2.Job) -> bool:
    return job.status in lifecycle.FINISHED


def _expiry(token: str) -> float:
    """The (already verified) token's `exp`, in seconds since the epoch."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])


def _heartbeat() -> notifier_service_pb2.Heartbeat:
    beat = notifier_service_pb2.Heartbeat()
    beat.time.GetCurrentTime()
    return beat


class _Pace:
    """When a stream owes its watcher a heartbeat, and when its token runs out (loop time)."""

    __slots__ = ("_every", "expires_at", "heartbeat_at")

    def __init__(self, every: float, expires_at: float) -> None:
        self._every = every
        self.expires_at = expires_at
        self.heartbeat_at = 0.0
        self.sent()

    def sent(self) -> None:
        self.heartbeat_at = asyncio.get_running_loop().time() + self._every

    async def next(self, subscriber: Subscriber) -> Change | Signal | None:
        """The subscriber's next item, or None when a heartbeat is due; raises UNAUTHENTICATED
        once the token has expired."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self.expires_at:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, TOKEN_EXPIRED)
        item = await subscriber.next(min(self.heartbeat_at, self.expires_at))
        if item is None and loop.time() >= self.expires_at:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, TOKEN_EXPIRED)
        return item


class NotifierService(notifier_service_pb2_grpc.NotifierServiceServicer):
    def __init__(
        self,
        hub: EventHub,
        cache: JobCache,
        replayer: Replayer,
        verifier: TokenVerifier,
        limits: StreamLimits,
        *,
        heartbeat_seconds: float,
    ) -> None:
        self._hub = hub
        self._cache = cache
        self._replayer = replayer
        self._verifier = verifier
        self._limits = limits
        self._heartbeat_seconds = heartbeat_seconds

    @property
    def active_streams(self) -> int:
        return self._limits.open

    async def _caller(self, metadata: grpc.aio.Metadata | None) -> tuple[Identity, _Pace]:
        """Who calls (UNAUTHENTICATED before anything else), and the pace of their stream."""
        who = await self._verifier.identify(metadata)
        token = bearer_from_metadata(metadata)
        assert token is not None  # identify() succeeded
        remaining = _expiry(token) - time.time()
        loop = asyncio.get_running_loop()
        return who, _Pace(self._heartbeat_seconds, loop.time() + remaining)

    def _cursor(
        self, sequence: int, kind: Kind = Kind.EVENT, version: int = 0, job: str = ""
    ) -> str:
        made = Cursor(self._hub.stream_created, sequence, kind, version)
        if job:
            made = Cursor(made.created, sequence, kind, version, job_hash(job))
        return made.encode()

    def _stale(self, cursor: Cursor) -> str | None:
        if cursor.created != self._hub.stream_created:
            return "the event stream was recreated; changes since the cursor are lost"
        return None

    async def _final(self, job: job_pb2.Job) -> job_pb2.Job:
        """A finished job as the last message: a fresh read with signed URLs (events carry
        none), one read per job however many streams need it."""
        final = await self._cache.final(job.id, job.version)
        return final if final is not None else job

    # --- WatchJob ----------------------------------------------------------------------------

    async def WatchJob(
        self, request: notifier_service_pb2.WatchJobRequest, context: WatchJobContext
    ) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
        who, pace = await self._caller(context.invocation_metadata())
        parsed = parse_uuid(request.job_id)
        violations: list[tuple[str, str]] = []
        if parsed is None:
            violations.append(("job_id", "must be a UUID in canonical form"))
        cursor: Cursor | None = None
        if request.cursor:
            try:
                cursor = decode(request.cursor)
            except CursorError:
                violations.append(("cursor", "is not a cursor from a WatchJob stream"))
        if parsed is not None and cursor is not None and not cursor.is_for_job(str(parsed)):
            violations.append(("cursor", "is from a stream of another job"))
        if violations:
            raise invalid_argument(violations)
        assert parsed is not None
        job_id = str(parsed)  # events are published under the lower-case form
        with (
            self._limits.slot(who.subject),
            # Registered before the first read, so every change after that read reaches us.
            self._hub.watch_job(job_id) as subscriber,
            self._cache.held(job_id),
        ):
            log.debug("watch started", extra={"job_id": job_id})
            async for response in self._watch_job(job_id, who, cursor, subscriber, pace):
                yield response
                pace.sent()
            log.debug("watch ended", extra={"job_id": job_id})

    async def _watch_job(
        self,
        job_id: str,
        who: Identity,
        cursor: Cursor | None,
        subscriber: Subscriber,
        pace: _Pace,
    ) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
        registered_at = self._hub.position  # every event after this reaches the subscriber
        found = await self._cache.owned(job_id)
        if found is None or found[0] != who.subject:
            raise not_found(f"job {job_id}")
        position, last_version = registered_at, 0

        def message(job: job_pb2.Job) -> notifier_service_pb2.WatchJobResponse:
            return notifier_service_pb2.WatchJobResponse(
                job=job, cursor=self._cursor(position, version=job.version, job=job_id)
            )

        if cursor is not None:
            reset = self._stale(cursor)
            last_version = cursor.version
            if reset is None and cursor.sequence < registered_at:
                try:
                    async for change in self._replayer.changes(cursor, job_events(job_id)):
                        position = change.seq
                        if change.job.version <= last_version:
                            continue
                        if is_terminal(change.job):
                            yield message(await self._final(change.job))
                            return
                        yield message(change.job)
                        last_version = change.job.version
                except Expired as exc:
                    reset = exc.reason
            if reset is not None:
                position, last_version = registered_at, 0
                yield notifier_service_pb2.WatchJobResponse(
                    reset=notifier_service_pb2.Reset(reason=reset),
                    cursor=self._cursor(position, job=job_id),
                )
            else:
                position = max(position, cursor.sequence)

        # The newest state known (the read, or an event since): what the watcher lacks of it.
        state = self._cache.latest(job_id) or found[1]
        if state.version > last_version:
            if is_terminal(state):
                yield message(await self._final(state))
                return
            yield message(state)
            last_version = state.version
        elif is_terminal(state):
            return  # the watcher has had the finished state already

        while True:
            item = await pace.next(subscriber)
            if item is None:
                if subscriber.idle:  # it has dealt with everything the hub has seen
                    position = max(position, self._hub.position)
                yield notifier_service_pb2.WatchJobResponse(
                    heartbeat=_heartbeat(),
                    cursor=self._cursor(position, version=last_version, job=job_id),
                )
                continue
            if item is Signal.CLOSED:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            if item is Signal.LAGGED:
                # The cache holds the newest state the hub has seen: resync from it, no read.
                log.info("resyncing a lagging watcher", extra={"job_id": job_id})
                position = max(position, self._hub.position)
                latest = self._cache.latest(job_id)
                if latest is None or latest.version <= last_version:
                    continue
                job = latest
            else:
                assert isinstance(item, Change)
                if item.seq <= position:
                    continue  # dealt with already (by the catch-up or a resync)
                position = item.seq
                job = item.job
                if job.version <= last_version:
                    continue  # a redelivery, or older than what the watcher already has
            if is_terminal(job):
                yield message(await self._final(job))
                return
            yield message(job)
            last_version = job.version

    # --- WatchJobs ---------------------------------------------------------------------------

    async def WatchJobs(
        self, request: notifier_service_pb2.WatchJobsRequest, context: WatchJobsContext
    ) -> AsyncIterator[notifier_service_pb2.WatchJobsResponse]:
        who, pace = await self._caller(context.invocation_metadata())
        violations: list[tuple[str, str]] = []
        kinds = frozenset(int(k) for k in request.kinds)
        statuses = frozenset(int(s) for s in request.statuses)
        if not kinds <= _KINDS:
            violations.append(("kinds", "must be MEDIA_KIND_IMAGE or MEDIA_KIND_VIDEO"))
        if not statuses <= _STATUSES:
            violations.append(("statuses", "must be JOB_STATUS_QUEUED ... JOB_STATUS_CANCELED"))
        cursor: Cursor | None = None
        if request.cursor:
            try:
                cursor = decode(request.cursor)
            except CursorError:
                violations.append(("cursor", "is not a cursor from a WatchJobs stream"))
        if violations:
            raise invalid_argument(violations)

        def accept(job: job_pb2.Job) -> bool:
            return (not kinds or job.kind in kinds) and (not statuses or job.status in statuses)

        with (
            self._limits.slot(who.subject),
            self._hub.watch_owner(who.subject, accept) as subscriber,
        ):
            log.debug("feed started")
            async for response in self._watch_jobs(
                who.subject, kinds, statuses, accept, cursor, subscriber, pace
            ):
                yield response
                pace.sent()

    async def _watch_jobs(
        self,
        owner: str,
        kinds: Collection[int],
        statuses: Collection[int],
        accept: Accept,
        cursor: Cursor | None,
        subscriber: Subscriber,
        pace: _Pace,
    ) -> AsyncIterator[notifier_service_pb2.WatchJobsResponse]:
        registered_at = self._hub.position  # every event after this reaches the subscriber
        position = registered_at
        snapshot = cursor is None or cursor.kind == Kind.SNAPSHOT
        if cursor is not None and not snapshot:
            reset = self._stale(cursor)
            if reset is None and cursor.sequence < registered_at:
                try:
                    async for change in self._replayer.changes(cursor, owner_events(owner)):
                        position = change.seq
                        if accept(change.job):
                            yield await self._feed_message(change)
                except Expired as exc:
                    reset = exc.reason
            if reset is not None:
                position, snapshot = registered_at, True
                yield notifier_service_pb2.WatchJobsResponse(
                    reset=notifier_service_pb2.Reset(reason=reset),
                    cursor=self._cursor(position, Kind.SNAPSHOT),
                )
            else:
                position = max(position, cursor.sequence)

        # Jobs of the snapshot and their versions: a change they already show is not sent again.
        shown: dict[str, int] = {}
        held: deque[Change | Signal] = deque()
        if snapshot:
            inside = self._cursor(position, Kind.SNAPSHOT)
            listed = [
                job
                for job in await self._cache.list_active(owner, sorted(kinds))
                if not statuses or job.status in statuses
            ]
            for job in listed:
                shown[job.id] = job.version
                yield notifier_service_pb2.WatchJobsResponse(job=job, cursor=inside)
            position = await self._settle(listed, shown, position, subscriber, held)
            yield notifier_service_pb2.WatchJobsResponse(
                snapshot_done=notifier_service_pb2.SnapshotDone(), cursor=self._cursor(position)
            )

        while True:
            item = held.popleft() if held else await pace.next(subscriber)
            if item is None:
                if subscriber.idle:  # it has dealt with everything the hub has seen
                    position = max(position, self._hub.position)
                yield notifier_service_pb2.WatchJobsResponse(
                    heartbeat=_heartbeat(), cursor=self._cursor(position)
                )
                continue
            if item is Signal.CLOSED:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            if item is Signal.LAGGED:
                # Resume is exact, so a feed that cannot keep up goes back to its cursor rather
                # than holding events for it here.
                raise RpcError(grpc.StatusCode.UNAVAILABLE, FELL_BEHIND, retry_after_seconds=1.0)
            assert isinstance(item, Change)
            if item.seq <= position:
                continue  # sent by the catch-up already
            position = item.seq
            if shown:
                known = shown.pop(item.job.id, None)
                if known is not None and item.job.version <= known:
                    shown[item.job.id] = known
                    continue
            yield await self._feed_message(item)

    async def _settle(
        self,
        listed: list[job_pb2.Job],
        shown: dict[str, int],
        position: int,
        subscriber: Subscriber,
        held: deque[Change | Signal],
    ) -> int:
        """The position the snapshot is complete at. A listed job's latest event may reach the
        stream only after the listing (the outbox publishes just after the commit): with the
        snapshot's cursor before it, a resume would send that change again. So, for a short
        while, the events of recently changed listed jobs are awaited; those the snapshot shows
        already move the cursor past them, anything newer is held for after `snapshot_done`."""
        awaiting: dict[str, int] = {}
        now = time.time()
        for job in listed:
            if now - job.update_time.ToNanoseconds() / 1e9 > _SETTLE_RECENT_SECONDS:
                continue  # its events went by long ago
            seen = self._hub.recent.get(job.id)
            if seen is not None and seen[0] >= job.version and seen[1] <= position:
                continue  # before the stream registered: the cursor is past it already
            awaiting[job.id] = job.version
        deadline = asyncio.get_running_loop().time() + _SETTLE_SECONDS
        while awaiting:
            item = await subscriber.next(deadline)
            if item is None:
                break  # not published yet (NATS down?): the versions still tell replays apart
            if not isinstance(item, Change):
                held.append(item)
                break
            if item.job.version >= awaiting.get(item.job.id, item.job.version + 1):
                del awaiting[item.job.id]
            if not held and item.job.version <= shown.get(item.job.id, 0):
                position = item.seq  # shown in the snapshot already
            else:
                held.append(item)
        return position

    async def _feed_message(self, change: Change) -> notifier_service_pb2.WatchJobsResponse:
        job = await self._final(change.job) if is_terminal(change.job) else change.job
        return notifier_service_pb2.WatchJobsResponse(job=job, cursor=self._cursor(change.seq))
