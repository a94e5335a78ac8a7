"""One JetStream subscription per process on every status event, fanned out to the streams open
in this process: WatchJob streams by job ID, WatchJobs feeds by owner.

The subscription is an ordered push consumer starting after the stream's last event at start-up:
nats-py recreates it from the last stream sequence it saw when heartbeats stop (a NATS restart
or a lost consumer), so the hub sees every later event once, in stream order, and `position` (the
sequence of the last event dealt with) is where every open stream is. Events at or below it (the
replay a recreation before the first event causes) are dropped.

Each subscriber has a bounded buffer and no task of its own: `offer` never blocks and never
awaits, so one slow stream cannot hold up the others; one that falls behind is marked lagging
(its buffer dropped) and resyncs (WatchJob) or ends with its cursor (WatchJobs). The hub also
keeps the job cache's entries up to date, so a watcher that joins or resyncs needs no read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind

from media.v1 import events_pb2, job_pb2, notifications_pb2
from services.common import lifecycle, logs, tracing
from services.common.jetstream import ALL_EVENTS, EVENTS_STREAM, job_id_of_event

log = logging.getLogger(__name__)

# Jobs of the latest events the hub has seen: (version, sequence) by job ID. A feed's opening
# snapshot asks it whether the event of a job it listed has gone by already (~250 bytes each).
RECENT_JOBS = 4096


class Signal(enum.Enum):
    LAGGED = "lagged"  # events were dropped: resync (WatchJob) or resume from the cursor
    CLOSED = "closed"  # the hub is shutting down: end the stream


class Change:
    """One event: its stream sequence, the job after the change and, when the change finished
    the job, the notification it left the owner. Shared by every stream it is offered to."""

    __slots__ = ("job", "notification", "seq")

    def __init__(
        self,
        seq: int,
        job: job_pb2.Job,
        notification: notifications_pb2.Notification | None = None,
    ) -> None:
        self.seq = seq
        self.job = job
        self.notification = notification

    @classmethod
    def of_event(cls, seq: int, event: events_pb2.JobEvent) -> Change:
        notification = event.notification if event.HasField("notification") else None
        return cls(seq, event.job, notification)


Accept = Callable[[job_pb2.Job], bool]


class Subscriber:
    """The events one stream wants, in stream order, buffered up to `limit`."""

    __slots__ = ("_accept", "_closed", "_items", "_lagging", "_limit", "_waiter", "key")

    def __init__(self, key: str, limit: int, accept: Accept | None = None) -> None:
        self.key = key
        self._limit = limit
        self._accept = accept
        self._items: deque[Change] = deque()
        self._lagging = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def lagging(self) -> bool:
        return self._lagging

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing missed: the stream has dealt with all the hub has seen."""
        return not self._items and not self._lagging

    def offer(self, change: Change) -> bool:
        """Buffers `change` (when accepted) without blocking; False when this made it lag."""
        if self._closed or self._lagging:
            return True
        if self._accept is not None and not self._accept(change.job):
            return True
        if len(self._items) >= self._limit:
            self._items.clear()
            self._lagging = True
            self._wake()
            return False
        self._items.append(change)
        self._wake()
        return True

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def poll(self) -> Change | Signal | None:
        """The next item if there is one (None: nothing yet)."""
        if self._closed:
            return Signal.CLOSED
        if self._lagging:
            # Buffering resumes now, before the caller resyncs, so nothing after that is lost.
            self._lagging = False
            return Signal.LAGGED
        if self._items:
            return self._items.popleft()
        return None

    async def next(self, deadline: float | None = None) -> Change | Signal | None:
        """The next item; None when the loop's clock reaches `deadline` first."""
        while True:
            item = self.poll()
            if item is not None:
                return item
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                # asyncio.timeout_at schedules a timer, not a task: nothing per stream but this.
                async with asyncio.timeout_at(deadline):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None


class JobObserver(Protocol):
    def observe(self, job: job_pb2.Job) -> None: ...


class EventHub:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        queue_size: int,
        idle_heartbeat_seconds: float,
        observer: JobObserver | None = None,
    ) -> None:
        self._js = js
        self._queue_size = queue_size
        self._idle_heartbeat = idle_heartbeat_seconds
        self._observer = observer
        self._by_job: dict[str, set[Subscriber]] = {}
        self._by_owner: dict[str, set[Subscriber]] = {}
        self._sub: JetStreamContext.PushSubscription | None = None
        self._closed = False
        self.position = 0  # the stream sequence of the last event dealt with
        self.stream_created = 0  # MEDIA_EVENTS' creation time, µs (cursors carry it)
        self.events_received = 0
        self.lagged_total = 0
        self.recent: OrderedDict[str, tuple[int, int]] = OrderedDict()

    @property
    def watcher_count(self) -> int:
        return sum(len(g) for g in self._by_job.values()) + sum(
            len(g) for g in self._by_owner.values()
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        info = await self._js.stream_info(EVENTS_STREAM)
        self.position = info.state.last_seq
        self.stream_created = created_micros(info.created)
        self._sub = await self._js.subscribe(
            ALL_EVENTS,
            stream=EVENTS_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            # From just after what the stream held when we read its state, so that an event
            # stored meanwhile is not skipped (DeliverPolicy.NEW would skip it).
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.position + 1
            ),
            idle_heartbeat=self._idle_heartbeat,
        )
        # A recreation before the first event restarts at "last sequence seen + 1"; start that
        # count here instead of at 0, which would replay the whole stream.
        # (nats-py keeps that count on the core subscription's ordered-consumer state.)
        jsi = getattr(getattr(self._sub, "_sub", None), "_jsi", None)
        if jsi is not None and getattr(jsi, "_sseq", None) == 0:
            jsi._sseq = self.position
        log.info(
            "subscribed to job events",
            extra={"stream": EVENTS_STREAM, "position": self.position},
        )

    @contextmanager
    def watch_job(self, job_id: str) -> Iterator[Subscriber]:
        with self._subscribed(self._by_job, job_id, None) as subscriber:
            yield subscriber

    @contextmanager
    def watch_owner(self, owner: str, accept: Accept | None = None) -> Iterator[Subscriber]:
        with self._subscribed(self._by_owner, owner, accept) as subscriber:
            yield subscriber

    @contextmanager
    def _subscribed(
        self, index: dict[str, set[Subscriber]], key: str, accept: Accept | None
    ) -> Iterator[Subscriber]:
        subscriber = Subscriber(key, self._queue_size, accept)
        if self._closed:
            subscriber.close()
        index.setdefault(key, set()).add(subscriber)
        try:
            yield subscriber
        finally:
            group = index.get(key)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del index[key]

    def close(self) -> None:
        """Ends every stream (they see Signal.CLOSED); new ones end at once."""
        self._closed = True
        for index in (self._by_job, self._by_owner):
            for group in index.values():
                for subscriber in group:
                    subscriber.close()

    async def stop(self) -> None:
        self.close()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be closed; nothing to undo
                log.debug("unsubscribe failed: %s", exc)

    async def _on_message(self, msg: Msg) -> None:
        # Runs for every event of every job: never await here, so no stream can hold it up.
        seq = msg.metadata.sequence.stream
        if seq <= self.position:
            return  # a replay after the consumer was recreated
        self.events_received += 1
        job_id = job_id_of_event(msg.subject)
        try:
            self._dispatch(seq, job_id, msg)
        finally:
            self.position = seq

    def _dispatch(self, seq: int, job_id: str, msg: Msg) -> None:
        event = events_pb2.JobEvent()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            log.warning("undecodable job event dropped", extra={"job_id": job_id})
            return
        if event.job.id != job_id:
            log.warning(
                "job event on the wrong subject dropped",
                extra={"job_id": job_id, "event_job_id": event.job.id},
            )
            return
        if self._observer is not None:
            self._observer.observe(event.job)
        self.recent[job_id] = (event.job.version, seq)
        self.recent.move_to_end(job_id)
        if len(self.recent) > RECENT_JOBS:
            self.recent.popitem(last=False)
        by_job = self._by_job.get(job_id)
        by_owner = self._by_owner.get(event.owner) if event.owner else None
        if not by_job and not by_owner:
            return
        change = Change.of_event(seq, event)
        # The event continues the trace of the change that caused it (its outbox row's context).
        with (
            logs.job_context(job_id),
            tracing.span(
                "notify watchers",
                parent=tracing.context_from_headers(msg.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "media.job_id": job_id,
                    "media.watchers": len(by_job or ()) + len(by_owner or ()),
                },
            ),
        ):
            for group in (by_job, by_owner):
                for subscriber in tuple(group or ()):
                    if not subscriber.offer(change):
                        self.lagged_total += 1
                        log.info("a stream fell behind", extra={"job_id": job_id})
            if event.job.status in lifecycle.FINISHED:
                # Inside the span: the line carries the trace of the change that finished it.
                log.info(
                    "job finished, watchers notified",
                    extra={
                        "job_id": job_id,
                        "status": job_pb2.JobStatus.Name(event.job.status),
                        "watchers": len(by_job or ()) + len(by_owner or ()),
                    },
                )


def created_micros(created: object) -> int:
    """A stream's creation time (nats-py gives a datetime) as whole microseconds."""
    timestamp = getattr(created, "timestamp", None)
    if not callable(timestamp):
        return 0
    seconds: float = timestamp()
    return round(seconds * 1_000_000)
