"""What a WatchJobs stream (a feed) sends, once the servicer has let it in and registered it
with the hub by owner: the caller's unfinished jobs (a snapshot), then every change to any of
their jobs; a change that finished a job carries the notification it left in the caller's
inbox.

A feed resumed with a cursor gets exactly the changes it missed, from the event stream itself
(replay.py), and then live ones; a feed that lags behind ends with UNAVAILABLE, to resume from
its cursor.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping

import grpc

from media.v1 import job_pb2, notifier_service_pb2
from services.common.errors import RpcError
from services.common.jetstream import owner_events
from services.notifier.cursor import Cursor, Kind
from services.notifier.hub import Accept, Change, Signal, Subscriber
from services.notifier.replay import Expired
from services.notifier.streams import Pace, Streams, heartbeat, is_terminal

FELL_BEHIND = "fell behind; resume with the last cursor"
# A feed's opening snapshot waits at most this long for the events of the jobs it listed that
# changed within the last _SETTLE_RECENT_SECONDS (see _settle).
_SETTLE_SECONDS = 5.0
_SETTLE_RECENT_SECONDS = 30.0


async def responses(
    streams: Streams,
    owner: str,
    kinds: Collection[int],
    statuses: Collection[int],
    accept: Accept,
    cursor: Cursor | None,
    subscriber: Subscriber,
    pace: Pace,
) -> AsyncIterator[notifier_service_pb2.WatchJobsResponse]:
    hub = streams.hub
    registered_at = hub.position  # every event after this reaches the subscriber
    position = registered_at
    snapshot = cursor is None or cursor.kind == Kind.SNAPSHOT
    if cursor is not None and not snapshot:
        reset = streams.stale(cursor)
        if reset is None and cursor.sequence < registered_at:
            try:
                async for change in streams.replayer.changes(cursor, owner_events(owner)):
                    position = change.seq
                    if accept(change.job):
                        yield await _message(streams, change)
            except Expired as exc:
                reset = exc.reason
        if reset is not None:
            position, snapshot = registered_at, True
            yield notifier_service_pb2.WatchJobsResponse(
                reset=notifier_service_pb2.Reset(reason=reset),
                cursor=streams.cursor(position, Kind.SNAPSHOT),
            )
        else:
            position = max(position, cursor.sequence)

    # Jobs of the snapshot and their versions: a change they already show is not sent again.
    shown: dict[str, int] = {}
    held: deque[Change | Signal] = deque()
    if snapshot:
        inside = streams.cursor(position, Kind.SNAPSHOT)
        listed = [
            job
            for job in await streams.cache.list_active(owner, sorted(kinds))
            if not statuses or job.status in statuses
        ]
        for job in listed:
            shown[job.id] = job.version
            yield notifier_service_pb2.WatchJobsResponse(job=job, cursor=inside)
        position = await _settle(hub.recent, listed, shown, position, subscriber, held)
        yield notifier_service_pb2.WatchJobsResponse(
            snapshot_done=notifier_service_pb2.SnapshotDone(), cursor=streams.cursor(position)
        )

    while True:
        item = held.popleft() if held else await pace.next(subscriber)
        if item is None:
            if subscriber.idle:  # it has dealt with everything the hub has seen
                position = max(position, hub.position)
            yield notifier_service_pb2.WatchJobsResponse(
                heartbeat=heartbeat(), cursor=streams.cursor(position)
            )
            continue
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
        yield await _message(streams, item)


async def _settle(
    recent: Mapping[str, tuple[int, int]],
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
    already move the cursor past them, anything newer is held for after `snapshot_done`.
    `recent` is the hub's: the latest (version, sequence) it has seen of each recent job."""
    awaiting: dict[str, int] = {}
    now = time.time()
    for job in listed:
        if now - job.update_time.ToNanoseconds() / 1e9 > _SETTLE_RECENT_SECONDS:
            continue  # its events went by long ago
        seen = recent.get(job.id)
        if seen is not None and seen[0] >= job.version and seen[1] <= position:
            continue  # before the stream registered: the cursor is past it already
        awaiting[job.id] = job.version
    deadline = asyncio.get_running_loop().time() + _SETTLE_SECONDS
    while awaiting:
        item = await subscriber.next(deadline)
        if item is None:
            break  # not published yet (NATS down?): the versions still tell replays apart
        if item is Signal.CLOSED:
            break  # the subscriber keeps saying so: the stream ends on it after the snapshot
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


async def _message(streams: Streams, change: Change) -> notifier_service_pb2.WatchJobsResponse:
    job = await streams.final(change.job) if is_terminal(change.job) else change.job
    response = notifier_service_pb2.WatchJobsResponse(job=job, cursor=streams.cursor(change.seq))
    if change.notification is not None:
        response.notification.CopyFrom(change.notification)
        response.notification.read = False  # it has just been left in the inbox
    return response
