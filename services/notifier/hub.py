"""One JetStream subscription per process on every job's status events, fanned out to the
watchers registered in this process by job ID.

The subscription is an ordered push consumer starting at new messages: nats-py recreates it from
the last stream sequence it saw when heartbeats stop (a NATS restart or a lost consumer), so
no event is missed across reconnects; the replay of older events that this would cause before the
first event arrived is dropped here. Each watcher has a bounded buffer; one that falls behind is
marked lagging (its buffer dropped) and must resync through GetJob, so a slow watcher never blocks
the others nor grows memory.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from opentelemetry.trace import SpanKind

from media.v1 import events_pb2, job_pb2
from services.common import lifecycle, logs, tracing
from services.common.jetstream import EVENTS_STREAM, event_subject

log = logging.getLogger(__name__)

_SUBJECT_PREFIX = event_subject("")


class Signal(enum.Enum):
    LAGGED = "lagged"  # events were dropped: read the job again, then carry on
    CLOSED = "closed"  # the hub is shutting down: end the stream


class Watcher:
    """The events of one job for one WatchJob stream, in arrival order."""

    def __init__(self, job_id: str, limit: int) -> None:
        self.job_id = job_id
        self._limit = limit
        self._jobs: deque[job_pb2.Job] = deque()
        self._lagging = False
        self._closed = False
        self._ready = asyncio.Event()

    @property
    def lagging(self) -> bool:
        return self._lagging

    def offer(self, job: job_pb2.Job) -> bool:
        """Buffers `job` without ever blocking; returns False when this made the watcher lag."""
        if self._closed or self._lagging:
            return True
        if len(self._jobs) >= self._limit:
            self._jobs.clear()
            self._lagging = True
            self._ready.set()
            return False
        self._jobs.append(job)
        self._ready.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._jobs.clear()
        self._ready.set()

    async def next(self) -> job_pb2.Job | Signal:
        while True:
            if self._closed:
                return Signal.CLOSED
            if self._lagging:
                # Buffering resumes now, before the caller reads the job again, so nothing that
                # happens after that read can be lost.
                self._lagging = False
                return Signal.LAGGED
            if self._jobs:
                return self._jobs.popleft()
            self._ready.clear()
            await self._ready.wait()


class EventHub:
    def __init__(
        self, js: JetStreamContext, *, watcher_queue_size: int, idle_heartbeat_seconds: float
    ) -> None:
        self._js = js
        self._queue_size = watcher_queue_size
        self._idle_heartbeat = idle_heartbeat_seconds
        self._watchers: dict[str, set[Watcher]] = {}
        self._sub: JetStreamContext.PushSubscription | None = None
        self._closed = False
        # nats-py recreates an ordered consumer at "last sequence seen + 1", which is 1 when
        # nothing arrived yet: messages up to the stream's end at start-up are that replay.
        self._replay_floor = 0
        self._seen_any = False
        self.events_received = 0
        self.lagged_total = 0

    @property
    def watcher_count(self) -> int:
        return sum(len(group) for group in self._watchers.values())

    async def start(self) -> None:
        info = await self._js.stream_info(EVENTS_STREAM)
        self._replay_floor = info.state.last_seq
        self._sub = await self._js.subscribe(
            f"{_SUBJECT_PREFIX}>",
            stream=EVENTS_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            idle_heartbeat=self._idle_heartbeat,
        )
        log.info("subscribed to job events", extra={"stream": EVENTS_STREAM})

    def register(self, job_id: str, *, limit: int | None = None) -> Watcher:
        watcher = Watcher(job_id, limit or self._queue_size)
        if self._closed:
            watcher.close()
        self._watchers.setdefault(job_id, set()).add(watcher)
        return watcher

    def unregister(self, watcher: Watcher) -> None:
        group = self._watchers.get(watcher.job_id)
        if group is None:
            return
        group.discard(watcher)
        if not group:
            del self._watchers[watcher.job_id]

    @contextmanager
    def watch(self, job_id: str, *, limit: int | None = None) -> Iterator[Watcher]:
        watcher = self.register(job_id, limit=limit)
        try:
            yield watcher
        finally:
            self.unregister(watcher)

    def close(self) -> None:
        """Ends every watch (they finish with Signal.CLOSED); new ones end at once."""
        self._closed = True
        for group in self._watchers.values():
            for watcher in group:
                watcher.close()

    async def stop(self) -> None:
        self.close()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be closed; nothing to undo
                log.debug("unsubscribe failed: %s", exc)

    async def _on_message(self, msg: Msg) -> None:
        # Runs for every event of every job: never await here, so one slow watcher cannot
        # hold up the subscription.
        if not self._seen_any:
            if msg.metadata.sequence.stream <= self._replay_floor:
                return
            self._seen_any = True
        self.events_received += 1
        job_id = msg.subject.removeprefix(_SUBJECT_PREFIX)
        group = self._watchers.get(job_id)
        if not group:
            return
        # The event continues the trace of the change that caused it (its outbox row's context).
        with (
            logs.job_context(job_id),
            tracing.span(
                "notify watchers",
                parent=tracing.context_from_headers(msg.headers),
                kind=SpanKind.CONSUMER,
                attributes={"media.job_id": job_id, "media.watchers": len(group)},
            ),
        ):
            self._fan_out(job_id, msg.data, group)

    def _fan_out(self, job_id: str, data: bytes, group: set[Watcher]) -> None:
        event = events_pb2.JobEvent()
        try:
            event.ParseFromString(data)
        except DecodeError:
            log.warning("undecodable job event dropped", extra={"job_id": job_id})
            return
        if event.job.id != job_id:
            log.warning(
                "job event on the wrong subject dropped",
                extra={"job_id": job_id, "event_job_id": event.job.id},
            )
            return
        for watcher in tuple(group):
            if not watcher.offer(event.job):
                self.lagged_total += 1
                log.info("watcher lagging, it will resync", extra={"job_id": job_id})
        if event.job.status in lifecycle.FINISHED:
            log.info(
                "job finished, watchers notified",
                extra={
                    "job_id": job_id,
                    "status": job_pb2.JobStatus.Name(event.job.status),
                    "watchers": len(group),
                },
            )
