"""What the streams of WatchJob (watch_job.py) and WatchJobs (watch_jobs.py) share: what they
run on (the hub, the job cache, the replayer), their pace (heartbeats, token expiry, the end at
shutdown), the cursors they hand out and the final read of a finished job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from media.v1 import job_pb2, notifier_service_pb2
from services.common import lifecycle
from services.common.errors import RpcError
from services.notifier.cursor import Cursor, Kind, job_hash
from services.notifier.hub import Change, EventHub, Signal, Subscriber
from services.notifier.jobs import JobCache
from services.notifier.replay import Replayer

TOKEN_EXPIRED = "token expired; watch again with a fresh token and the last cursor"
SHUTTING_DOWN = "notifier is shutting down; watch again with the last cursor"


def is_terminal(job: job_pb2.Job) -> bool:
    return job.status in lifecycle.FINISHED


def heartbeat() -> notifier_service_pb2.Heartbeat:
    beat = notifier_service_pb2.Heartbeat()
    beat.time.GetCurrentTime()
    return beat


class Pace:
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
        """The subscriber's next change or LAGGED, or None when a heartbeat is due. Raises
        UNAUTHENTICATED once the token has expired, and UNAVAILABLE when the hub closes (the
        notifier is shutting down)."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self.expires_at:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, TOKEN_EXPIRED)
        item = await subscriber.next(min(self.heartbeat_at, self.expires_at))
        if item is None and loop.time() >= self.expires_at:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, TOKEN_EXPIRED)
        if item is Signal.CLOSED:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        return item


@dataclass(frozen=True)
class Streams:
    """What the streams of this process run on."""

    hub: EventHub
    cache: JobCache
    replayer: Replayer

    def cursor(
        self, sequence: int, kind: Kind = Kind.EVENT, version: int = 0, job: str = ""
    ) -> str:
        made = Cursor(self.hub.stream_created, sequence, kind, version)
        if job:
            made = Cursor(made.created, sequence, kind, version, job_hash(job))
        return made.encode()

    def stale(self, cursor: Cursor) -> str | None:
        if cursor.created != self.hub.stream_created:
            return "the event stream was recreated; changes since the cursor are lost"
        return None

    async def final(self, job: job_pb2.Job) -> job_pb2.Job:
        """A finished job as the last message: a fresh read with signed URLs (events carry
        none), one read per job however many streams need it."""
        final = await self.cache.final(job.id, job.version)
        return final if final is not None else job
