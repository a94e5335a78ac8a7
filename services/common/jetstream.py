"""NATS JetStream layout shared by every service: streams, subjects and consumers.

MEDIA_DISPATCH (work queue): media.dispatch.<kind>, one durable pull consumer per kind.
MEDIA_EVENTS (limits):      media.events.<owner_key>.<job_id>, every status change of a job; the
                            owner's key in the subject lets a per-user replay filter on the server.
Both deduplicate on Nats-Msg-Id (the outbox row ID) within DUPLICATE_WINDOW_SECONDS.
MEDIA_WEBHOOK_EVENTS (work queue): a copy of MEDIA_EVENTS that JetStream itself keeps filling
                            (a stream source); an event leaves it once the webhook sender has
                            recorded its deliveries.
MEDIA_RATE_LIMITS (key-value): job_service's per-user CreateJob budgets, shared by its replicas.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

DISPATCH_STREAM = "MEDIA_DISPATCH"
EVENTS_STREAM = "MEDIA_EVENTS"
WEBHOOK_EVENTS_STREAM = "MEDIA_WEBHOOK_EVENTS"
DUPLICATE_WINDOW_SECONDS = 120.0
# A key-value bucket (the stream KV_MEDIA_RATE_LIMITS): one small value per user.
RATE_LIMIT_BUCKET = "MEDIA_RATE_LIMITS"
# Far more than the values of every user active within one bucket TTL (each ~150 bytes stored);
# when full, writes fail and job_service falls back to per-replica limits until keys expire.
RATE_LIMIT_BUCKET_MAX_BYTES = 64 * 1024 * 1024
_STREAM_IN_USE = 10058  # JetStream: "stream name already in use with a different configuration"


def dispatch_subject(kind: str) -> str:
    return f"media.dispatch.{kind}"


EVENTS_PREFIX = "media.events."
ALL_EVENTS = EVENTS_PREFIX + ">"
DEFAULT_EVENTS_MAX_AGE_SECONDS = 86400.0


def owner_key(owner: str) -> str:
    """The owner as a subject token: a subject cannot carry an arbitrary string (dots, spaces),
    and a hash keeps user names out of NATS' subject lists."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def event_subject(owner: str, job_id: str) -> str:
    return f"{EVENTS_PREFIX}{owner_key(owner)}.{job_id}"


def owner_events(owner: str) -> str:
    """The filter subject of every event of one owner's jobs."""
    return f"{EVENTS_PREFIX}{owner_key(owner)}.*"


def job_events(job_id: str) -> str:
    """The filter subject of every event of one job, whoever owns it."""
    return f"{EVENTS_PREFIX}*.{job_id}"


def job_id_of_event(subject: str) -> str:
    """The job ID an event subject names: its last token (also right for the owner-less
    media.events.<job_id> that releases before the owner key published)."""
    return subject.rpartition(".")[2]


def worker_consumer(kind: str) -> str:
    return f"worker-{kind}"


# The webhook sender's durable consumer of MEDIA_WEBHOOK_EVENTS, shared by all its replicas.
WEBHOOKS_CONSUMER = "webhooks"


async def connect(url: str, name: str) -> Client:
    """A connection that reconnects forever: a NATS restart must not take a service down."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


def _stream(
    name: str, wildcard: str, retention: RetentionPolicy, max_age_seconds: float | None = None
) -> StreamConfig:
    """A file-backed stream of the subjects `wildcard` matches, deduplicating on Nats-Msg-Id."""
    return StreamConfig(
        name=name,
        subjects=[wildcard],
        retention=retention,
        storage=StorageType.FILE,
        max_age=max_age_seconds,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )


async def ensure_streams(
    js: JetStreamContext, *, events_max_age_seconds: float | None = None
) -> None:
    """Creates or updates both streams; safe to call from every replica at start-up.

    events_max_age_seconds: how long MEDIA_EVENTS keeps events, i.e. how old a feed cursor may be
    (FEED_RETENTION_SECONDS). Only the notifier passes it; None keeps the stream's current value
    (DEFAULT_EVENTS_MAX_AGE_SECONDS for a new stream), so that the other services starting up
    never undo the notifier's setting."""
    configs = [
        _stream(DISPATCH_STREAM, "media.dispatch.>", RetentionPolicy.WORK_QUEUE),
        _stream(EVENTS_STREAM, ALL_EVENTS, RetentionPolicy.LIMITS, events_max_age_seconds),
    ]
    for config in configs:
        assert config.name is not None
        keep_age = config.name == EVENTS_STREAM and config.max_age is None
        try:
            info = await js.stream_info(config.name)
            if keep_age:
                config.max_age = info.config.max_age or DEFAULT_EVENTS_MAX_AGE_SECONDS
            await js.update_stream(config)
        except NotFoundError:
            if keep_age:
                config.max_age = DEFAULT_EVENTS_MAX_AGE_SECONDS
            await js.add_stream(config)


async def ensure_webhook_events_stream(js: JetStreamContext, *, max_age_seconds: float) -> None:
    """Creates MEDIA_WEBHOOK_EVENTS, or sets a new max age on it; safe from every sender replica.

    The server copies each event of MEDIA_EVENTS into it whether or not a sender runs, and an
    event stays until the sender acks it (work queue) or for max_age_seconds: so webhooks do not
    depend on how long MEDIA_EVENTS keeps events for the feed. A new stream starts with the events
    published from then on; an existing one keeps its source position."""
    try:
        config = (await js.stream_info(WEBHOOK_EVENTS_STREAM)).config
    except NotFoundError:
        new = StreamConfig(
            name=WEBHOOK_EVENTS_STREAM,
            sources=[
                StreamSource(name=EVENTS_STREAM, opt_start_time=datetime.datetime.now(datetime.UTC))
            ],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=max_age_seconds,
        )
        try:
            await js.add_stream(new)
            return
        except BadRequestError as exc:
            if exc.err_code != _STREAM_IN_USE:
                raise
        # Another replica created it a moment earlier: keep its start, set the age below.
        config = (await js.stream_info(WEBHOOK_EVENTS_STREAM)).config
    config.max_age = max_age_seconds
    await js.update_stream(config)


async def ensure_worker_consumer(
    js: JetStreamContext, kind: str, *, ack_wait_seconds: float, max_ack_pending: int
) -> None:
    config = ConsumerConfig(
        durable_name=worker_consumer(kind),
        filter_subject=dispatch_subject(kind),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_seconds,
        # job_service bounds attempts; JetStream must never stop redelivering on its own,
        # or a job would be left QUEUED forever.
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )
    await js.add_consumer(DISPATCH_STREAM, config)


async def ensure_rate_limit_bucket(js: JetStreamContext, *, ttl_seconds: float) -> None:
    """Creates the rate-limit bucket, or sets a new TTL on it; safe from every replica at start-up.

    The TTL drops a user's value once it has been idle that long (their budget is full again by
    then, so a missing value means a full budget)."""
    config = KeyValueConfig(
        bucket=RATE_LIMIT_BUCKET,
        history=1,
        ttl=ttl_seconds,
        max_bytes=RATE_LIMIT_BUCKET_MAX_BYTES,
        max_value_size=256,
        storage=StorageType.FILE,  # like the streams: a nats-server restart refills no budget
    )
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise
        # Created with another TTL (other rate settings): this replica's settings win.
        stream = (await js.stream_info(f"KV_{RATE_LIMIT_BUCKET}")).config
        stream.max_age = ttl_seconds
        stream.duplicate_window = min(DUPLICATE_WINDOW_SECONDS, ttl_seconds)
        await js.update_stream(stream)


# The PING a shielded flush waits for at most: far past any caller's deadline, so that its PONG
# future is never cancelled while the connection lives.
_FLUSH_BACKSTOP_SECONDS = 300


async def flush(nc: Client, timeout_seconds: float) -> None:
    """nc.flush() with a deadline that cannot break the connection. nats-py cancels the PONG
    future when flush times out (or its caller is cancelled, or the process was stopped past the
    deadline), and the PONG arriving later raises InvalidStateError in its read loop, which then
    stops reading for good: subscriptions and fetches go silent with the socket still up. Here the
    flush itself is never cancelled; only the wait for it is bounded."""
    inner = asyncio.ensure_future(nc.flush(timeout=_FLUSH_BACKSTOP_SECONDS))
    # Retrieved whatever happens, so that a late failure is not reported as never retrieved.
    inner.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        await asyncio.wait_for(asyncio.shield(inner), timeout_seconds)
    except TimeoutError:
        raise nats.errors.FlushTimeoutError from None
