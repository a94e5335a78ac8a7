"""Catching up from a cursor: the events stored after it, read from MEDIA_EVENTS itself.

Each read asks JetStream for the next stored message after a sequence on the caller's filter
subject (media.events.<owner_key>.* or media.events.*.<job_id>), so the server does the
filtering and no consumer is created or left behind. The catch-up ends when nothing is left;
whatever is stored after that reaches the stream live from the hub, where the stream was
registered before the first read, and sequences already sent are skipped at the hand-over.

Events older than the retention are gone: a cursor from before the stream's first sequence, or
from a stream since recreated, gets a reset, never a silent gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

import grpc
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from media.v1 import events_pb2
from services.common.backoff import backoff_delay
from services.common.errors import RpcError
from services.common.jetstream import EVENTS_STREAM, job_id_of_event
from services.notifier.cursor import Cursor
from services.notifier.hub import Change, created_micros

log = logging.getLogger(__name__)

T = TypeVar("T")

_ATTEMPTS = 5
_UNAVAILABLE = "the event store is unavailable; watch again with the last cursor"


class Expired(Exception):
    """The cursor's position is no longer kept (or belongs to a stream since recreated)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Replayer:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def changes(self, cursor: Cursor, filter_subject: str) -> AsyncIterator[Change]:
        """Every event on `filter_subject` after the cursor, in stream order. Raises Expired
        before yielding anything when that is not what the stream still holds."""
        after = cursor.sequence
        first = await self._next(after, filter_subject)
        # Checked after the first read: the stream's first sequence only grows, so if it is at
        # most after + 1 now, it was when the first read was served, which then missed nothing.
        await self._check(cursor)
        change = first
        while change is not None:
            yield change
            change = await self._next(change.seq, filter_subject)

    async def _check(self, cursor: Cursor) -> None:
        info = await self._retry(lambda: self._js.stream_info(EVENTS_STREAM))
        if created_micros(info.created) != cursor.created:
            raise Expired("the event stream was recreated; changes since the cursor are lost")
        state = info.state
        if cursor.sequence + 1 < state.first_seq:
            raise Expired("changes since the cursor are older than the retention")
        if cursor.sequence > state.last_seq:
            raise Expired("the cursor is ahead of the event stream")

    async def _next(self, after: int, filter_subject: str) -> Change | None:
        while True:
            try:
                raw = await self._retry(partial(self._get_next, after + 1, filter_subject))
            except nats.js.errors.NotFoundError:
                return None
            seq = int(raw.seq or 0)
            event = events_pb2.JobEvent()
            try:
                event.ParseFromString(raw.data or b"")
            except DecodeError:
                event.Clear()
            if event.job.id and event.job.id == job_id_of_event(raw.subject or ""):
                return Change.of_event(seq, event)
            log.warning("unreadable job event skipped", extra={"sequence": seq})
            after = seq

    async def _get_next(self, start: int, filter_subject: str) -> RawStreamMsg:
        return await self._js.get_msg(EVENTS_STREAM, seq=start, subject=filter_subject, next=True)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """A JetStream request, retried through a short outage (a NATS restart) before the
        stream gives up with UNAVAILABLE; its cursor resumes it exactly."""
        for attempt in range(_ATTEMPTS):
            try:
                return await call()
            except nats.js.errors.NotFoundError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.info("event store read failed (%r), attempt %d", exc, attempt + 1)
                if attempt + 1 < _ATTEMPTS:
                    await asyncio.sleep(backoff_delay(attempt + 1, 0.2, 2.0))
        raise RpcError(grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE, retry_after_seconds=1.0)
