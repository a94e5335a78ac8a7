"""NotifierService: WatchJob (one job: its state, then every change, then the end after a finished
state) and WatchJobs (the caller's feed: unfinished jobs, then every change to any of their jobs).

Here is each stream's prologue. It authenticates first (the bearer token, verified here as
job_service verifies it), then validates, then takes a slot under the stream limits, then
registers with the hub before anything is read, so no change after that read can be missed. What
a stream then sends is watch_job.py's and watch_jobs.py's: job state from the job cache, which
reads each job once for all of its watchers with the notifier's own credential, and every change
after it. Every message carries a cursor; a stream resumed with one gets exactly what it missed,
from the event stream itself (replay.py) and then live. An idle stream gets a heartbeat, and a
stream ends when its token expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import jwt

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import Identity, TokenVerifier, bearer_from_metadata
from services.common.errors import invalid_argument
from services.common.ids import parse_uuid
from services.notifier import watch_job, watch_jobs
from services.notifier.cursor import Cursor, CursorError, decode
from services.notifier.hub import EventHub
from services.notifier.jobs import JobCache
from services.notifier.limits import StreamLimits
from services.notifier.replay import Replayer
from services.notifier.streams import Pace, Streams

log = logging.getLogger(__name__)

SERVICE_NAME = notifier_service_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name

_KINDS = frozenset(lifecycle.KINDS_BY_NAME.values())
_STATUSES = frozenset(s for s in job_pb2.JobStatus.values() if s)

WatchJobContext = grpc.aio.ServicerContext[
    notifier_service_pb2.WatchJobRequest, notifier_service_pb2.WatchJobResponse
]
WatchJobsContext = grpc.aio.ServicerContext[
    notifier_service_pb2.WatchJobsRequest, notifier_service_pb2.WatchJobsResponse
]


def _expiry(token: str) -> float:
    """The (already verified) token's `exp`, in seconds since the epoch."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])


def _cursor(raw: str, rpc: str, violations: list[tuple[str, str]]) -> Cursor | None:
    """The request's cursor (None: it has none); one that does not decode is a violation."""
    if not raw:
        return None
    try:
        return decode(raw)
    except CursorError:
        violations.append(("cursor", f"is not a cursor from a {rpc} stream"))
        return None


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
        self._streams = Streams(hub, cache, replayer)
        self._verifier = verifier
        self._limits = limits
        self._heartbeat_seconds = heartbeat_seconds

    @property
    def active_streams(self) -> int:
        return self._limits.open

    async def _caller(self, metadata: grpc.aio.Metadata | None) -> tuple[Identity, Pace]:
        """Who calls (UNAUTHENTICATED before anything else), and the pace of their stream."""
        who = await self._verifier.identify(metadata)
        token = bearer_from_metadata(metadata)
        assert token is not None  # identify() succeeded
        remaining = _expiry(token) - time.time()
        loop = asyncio.get_running_loop()
        return who, Pace(self._heartbeat_seconds, loop.time() + remaining)

    async def WatchJob(
        self, request: notifier_service_pb2.WatchJobRequest, context: WatchJobContext
    ) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
        who, pace = await self._caller(context.invocation_metadata())
        parsed = parse_uuid(request.job_id)
        violations: list[tuple[str, str]] = []
        if parsed is None:
            violations.append(("job_id", "must be a UUID in canonical form"))
        cursor = _cursor(request.cursor, "WatchJob", violations)
        if parsed is not None and cursor is not None and not cursor.is_for_job(str(parsed)):
            violations.append(("cursor", "is from a stream of another job"))
        if violations:
            raise invalid_argument(violations)
        assert parsed is not None
        job_id = str(parsed)  # events are published under the lower-case form
        streams = self._streams
        with (
            self._limits.slot(who.subject),
            # Registered before the first read, so every change after that read reaches us.
            streams.hub.watch_job(job_id) as subscriber,
            streams.cache.held(job_id),
        ):
            log.debug("watch started", extra={"job_id": job_id})
            async for response in watch_job.responses(
                streams, job_id, who.subject, cursor, subscriber, pace
            ):
                yield response
                pace.sent()
            log.debug("watch ended", extra={"job_id": job_id})

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
        cursor = _cursor(request.cursor, "WatchJobs", violations)
        if violations:
            raise invalid_argument(violations)

        def accept(job: job_pb2.Job) -> bool:
            return (not kinds or job.kind in kinds) and (not statuses or job.status in statuses)

        with (
            self._limits.slot(who.subject),
            self._streams.hub.watch_owner(who.subject, accept) as subscriber,
        ):
            log.debug("feed started")
            async for response in watch_jobs.responses(
                self._streams, who.subject, kinds, statuses, accept, cursor, subscriber, pace
            ):
                yield response
                pace.sent()
