"""NATS JetStream layout shared by every service: streams, subjects and consumers.

MEDIA_DISPATCH (work queue): media.dispatch.<kind>, one durable pull consumer per kind.
MEDIA_EVENTS (limits):      media.events.<job_id>, every status change of a job.
Both deduplicate on Nats-Msg-Id (the outbox row ID) within DUPLICATE_WINDOW_SECONDS.
"""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

DISPATCH_STREAM = "MEDIA_DISPATCH"
EVENTS_STREAM = "MEDIA_EVENTS"
DUPLICATE_WINDOW_SECONDS = 120.0


def dispatch_subject(kind: str) -> str:
    return f"media.dispatch.{kind}"


def event_subject(job_id: str) -> str:
    return f"media.events.{job_id}"


def worker_consumer(kind: str) -> str:
    return f"worker-{kind}"


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


async def ensure_streams(js: JetStreamContext, *, events_max_age_seconds: float = 86400) -> None:
    """Creates or updates both streams; safe to call from every replica at start-up."""
    configs = [
        _stream(DISPATCH_STREAM, "media.dispatch.>", RetentionPolicy.WORK_QUEUE),
        _stream(EVENTS_STREAM, "media.events.>", RetentionPolicy.LIMITS, events_max_age_seconds),
    ]
    for config in configs:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)


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
