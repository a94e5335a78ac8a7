"""From the event stream to delivery rows: the durable pull consumer "webhooks" on
MEDIA_WEBHOOK_EVENTS (the server's copy of MEDIA_EVENTS, kept until the sender takes it), shared
by every replica.

Fetch loops put messages on a queue; one loop takes whatever has gathered (up to a batch), finds
the matching endpoints of the whole batch in one query, inserts a delivery per match (an event
delivered again adds nothing) and acknowledges the messages after the commit. On a database
error it naks them with a delay: nothing is lost. The deliveries this replica has slots for are
sent at once; the rest are left due for the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from media.v1 import events_pb2
from services.common import jetstream
from services.common.ids import parse_uuid
from services.webhooks.delivery_store import Delivery, DeliveryStore, Event, Match
from services.webhooks.dispatcher import Dispatcher

log = logging.getLogger(__name__)

BATCH = 200  # events per query
FETCHERS = 2  # pull requests outstanding at once (each asks for one message: see media_worker)
FETCH_TIMEOUT_SECONDS = 2.0  # a long poll; short so that a stop never waits long for one
ACK_WAIT_SECONDS = 30.0
NAK_DELAY_SECONDS = 2.0
MAX_ACK_PENDING = 10_000
_ERROR_PAUSE_SECONDS = 1.0
# Names an event that lacks a Nats-Msg-Id (none should) by its stream position instead.
_EVENT_NAMESPACE = uuid.UUID("0b9f3c1e-5a55-4b8e-9a52-1f6d3c0a7e21")


async def ensure_consumer(js: JetStreamContext, *, events_max_age_seconds: float) -> None:
    """Creates the stream of events waiting for the sender and its durable consumer, or updates
    them to these settings; safe from every replica."""
    await jetstream.ensure_webhook_events_stream(js, max_age_seconds=events_max_age_seconds)
    config = ConsumerConfig(
        durable_name=jetstream.WEBHOOKS_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=-1,  # an event is never dropped for failing to insert
        max_ack_pending=MAX_ACK_PENDING,
    )
    await js.add_consumer(jetstream.WEBHOOK_EVENTS_STREAM, config)


def decode(msg: Msg) -> Event | None:
    """The event a message carries; None for one published before events had a type."""
    event = events_pb2.JobEvent.FromString(msg.data)
    if not event.type:
        return None
    header = (msg.headers or {}).get("Nats-Msg-Id", "")
    event_id = parse_uuid(header)
    if event_id is None:
        event_id = uuid.uuid5(_EVENT_NAMESPACE, str(msg.metadata.sequence.stream))
    job_id = parse_uuid(event.job.id)
    if job_id is None:
        raise ValueError("the event's job has no valid id")
    return Event(
        event_id=event_id,
        event_type=event.type,
        job_id=job_id,
        owner=event.owner,
        kind=event.job.kind,
        version=event.job.version,
        payload=msg.data,
    )


class Fanout:
    def __init__(
        self,
        js: JetStreamContext,
        store: DeliveryStore,
        dispatcher: Dispatcher,
        *,
        events_max_age_seconds: float,
    ) -> None:
        self._js = js
        self._events_max_age_seconds = events_max_age_seconds
        self._store = store
        self._dispatcher = dispatcher
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=2 * BATCH)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for n in range(FETCHERS):
            self._tasks.append(loop.create_task(self._fetch_loop(), name=f"fetch-{n}"))
        self._inserter = loop.create_task(self._insert_loop(), name="fan-out")

    async def _fetch_loop(self) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        while not self._stopping.is_set():
            try:
                if sub is None:
                    sub = await self._js.pull_subscribe_bind(
                        jetstream.WEBHOOKS_CONSUMER, stream=jetstream.WEBHOOK_EVENTS_STREAM
                    )
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_SECONDS)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetching events failed: %r; retrying", exc)
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = None
                await asyncio.sleep(_ERROR_PAUSE_SECONDS)
                with contextlib.suppress(Exception):
                    # NATS may have lost them (a restart without its store)
                    await ensure_consumer(
                        self._js, events_max_age_seconds=self._events_max_age_seconds
                    )
                continue
            for msg in msgs:
                await self._queue.put(msg)

    async def _insert_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.handle(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fanning out a batch of events failed")

    async def handle(self, msgs: list[Msg]) -> None:
        """Inserts the deliveries of a batch of messages, acks them, sends what it can now."""
        events: list[Event] = []
        taken: list[Msg] = []
        for msg in msgs:
            try:
                event = decode(msg)
            except Exception as exc:
                log.error("dropping an event that does not decode: %r", exc)
                await msg.term()
                continue
            if event is None:
                log.debug("skipping an event without a type (published before webhooks)")
                await msg.ack()
                continue
            events.append(event)
            taken.append(msg)
        if not events:
            return
        matches: list[Match] = []
        reserved: list[bool] = []
        try:
            matches = await self._store.match(events)
            reserved = [self._dispatcher.reserve(m.endpoint) for m in matches]
            if not all(reserved):
                self._dispatcher.note_backlog()
            inserted = await self._store.insert(
                events, matches, reserved, self._dispatcher.lease_seconds
            )
        except Exception as exc:
            # (reserved is empty when the match itself failed)
            for match, mine in zip(matches, reserved, strict=False):
                if mine:
                    self._dispatcher.unreserve(match.endpoint)
            log.warning("recording deliveries failed: %r; the events come again", exc)
            for msg in taken:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=NAK_DELAY_SECONDS)
            return
        for msg in taken:
            await msg.ack()
        now: list[Delivery] = []
        for i, (match, mine) in enumerate(zip(matches, reserved, strict=True)):
            if not mine:
                continue
            delivery_id = inserted.get(i)
            if delivery_id is None:  # it existed already: whoever inserted it sends it
                self._dispatcher.unreserve(match.endpoint)
                continue
            event = events[match.index]
            now.append(
                Delivery(delivery_id, match.endpoint, event.event_type, event.payload, 0, False)
            )
        if now:
            self._dispatcher.start(now)

    async def stop(self) -> None:
        """Stops fetching; messages fetched and not yet recorded are handed back."""
        self._stopping.set()
        # A loop in a long poll finishes it rather than abandoning a pull request that could
        # take a message out of reach until the ack wait.
        loops = asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(loops), FETCH_TIMEOUT_SECONDS + 1)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
            await loops
        self._inserter.cancel()
        await asyncio.gather(self._inserter, return_exceptions=True)
        while not self._queue.empty():
            with contextlib.suppress(Exception):
                await self._queue.get_nowait().nak()
