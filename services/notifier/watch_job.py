"""What a WatchJob stream sends, once the servicer has let it in and registered it with the hub:
the job's state, then every change, then the end after a finished state.

The job's state comes from the job cache, which reads it once for all of its watchers. A stream
resumed with a cursor gets exactly the changes it missed, from the event stream itself
(replay.py), and then live ones; a watcher that lags behind is resynced from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from media.v1 import job_pb2, notifier_service_pb2
from services.common.errors import not_found
from services.common.jetstream import job_events
from services.notifier.cursor import Cursor
from services.notifier.hub import Change, Signal, Subscriber
from services.notifier.replay import Expired
from services.notifier.streams import Pace, Streams, heartbeat, is_terminal

log = logging.getLogger(__name__)


async def responses(
    streams: Streams,
    job_id: str,
    owner: str,
    cursor: Cursor | None,
    subscriber: Subscriber,
    pace: Pace,
) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
    hub, cache = streams.hub, streams.cache
    registered_at = hub.position  # every event after this reaches the subscriber
    found = await cache.owned(job_id)
    if found is None or found[0] != owner:
        raise not_found(f"job {job_id}")
    position, last_version = registered_at, 0

    def message(job: job_pb2.Job) -> notifier_service_pb2.WatchJobResponse:
        return notifier_service_pb2.WatchJobResponse(
            job=job, cursor=streams.cursor(position, version=job.version, job=job_id)
        )

    if cursor is not None:
        reset = streams.stale(cursor)
        last_version = cursor.version
        if reset is None and cursor.sequence < registered_at:
            try:
                async for change in streams.replayer.changes(cursor, job_events(job_id)):
                    position = change.seq
                    if change.job.version <= last_version:
                        continue
                    if is_terminal(change.job):
                        yield message(await streams.final(change.job))
                        return
                    yield message(change.job)
                    last_version = change.job.version
            except Expired as exc:
                reset = exc.reason
        if reset is not None:
            position, last_version = registered_at, 0
            yield notifier_service_pb2.WatchJobResponse(
                reset=notifier_service_pb2.Reset(reason=reset),
                cursor=streams.cursor(position, job=job_id),
            )
        else:
            position = max(position, cursor.sequence)

    # The newest state known (the read, or an event since): what the watcher lacks of it.
    state = cache.latest(job_id) or found[1]
    if state.version > last_version:
        if is_terminal(state):
            yield message(await streams.final(state))
            return
        yield message(state)
        last_version = state.version
    elif is_terminal(state):
        return  # the watcher has had the finished state already

    while True:
        item = await pace.next(subscriber)
        if item is None:
            if subscriber.idle:  # it has dealt with everything the hub has seen
                position = max(position, hub.position)
            yield notifier_service_pb2.WatchJobResponse(
                heartbeat=heartbeat(),
                cursor=streams.cursor(position, version=last_version, job=job_id),
            )
            continue
        if item is Signal.LAGGED:
            # The cache holds the newest state the hub has seen: resync from it, no read.
            log.info("resyncing a lagging watcher", extra={"job_id": job_id})
            position = max(position, hub.position)
            latest = cache.latest(job_id)
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
            yield message(await streams.final(job))
            return
        yield message(job)
        last_version = job.version
