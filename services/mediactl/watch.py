"""Following one job through NotifierService.WatchJob to its end, resuming when the stream breaks.

A new stream starts after the last cursor, so the server sends only what came after it. Jobs the
watcher has already shown (by job.version) are skipped all the same, for a server that replays
the current state (one without cursors, or after a reset), so nothing is shown twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common.lifecycle import FINISHED
from services.mediactl.resume import (
    DEFAULT_BACKOFF,
    RECONNECT_CODES,
    Backoff,
    Metadata,
    ResumableStream,
    StreamCall,
    WatchError,
)
from services.mediactl.tokens import TokenSource

__all__ = ["RECONNECT_CODES", "Backoff", "WatchError", "watch_job"]


def _ignore_reset(reason: str) -> None:
    pass


def watch_job(
    stub: notifier_service_pb2_grpc.NotifierServiceStub,
    job_id: str,
    tokens: TokenSource,
    on_job: Callable[[job_pb2.Job], None],
    *,
    on_reconnect: Callable[[str, float], None] = lambda reason, delay: None,
    on_reset: Callable[[str], None] = _ignore_reset,
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> job_pb2.Job:
    """Calls `on_job` with each new state and returns the finished job.

    Heartbeats only keep the cursor moving. A reset (the cursor could not be resumed) is passed
    to `on_reset`; the job that follows it is the job as it is now and is shown as any other.

    Raises grpc.RpcError for a status other than UNAVAILABLE (NOT_FOUND, UNAUTHENTICATED, ...) or
    when reconnecting keeps failing, and WatchError when the stream keeps ending early.
    """

    def open_stream(
        cursor: str, metadata: Metadata
    ) -> StreamCall[notifier_service_pb2.WatchJobResponse]:
        request = notifier_service_pb2.WatchJobRequest(job_id=job_id, cursor=cursor)
        return stub.WatchJob(request, metadata=metadata)

    stream = ResumableStream(
        open_stream,
        tokens,
        ended="the stream ended before the job finished",
        backoff=backoff,
        on_reconnect=on_reconnect,
        sleep=sleep,
        clock=clock,
    )
    last: job_pb2.Job | None = None
    for response in stream:
        event = response.WhichOneof("event")
        if event == "reset":
            on_reset(response.reset.reason)
            continue
        if event != "job":
            continue  # a heartbeat (or an event this client does not know): nothing to show
        job = response.job
        finished = job.status in FINISHED
        if _seen(last, job) and not finished:
            continue  # a replay of what was shown already
        stream.progressed()
        last = job
        on_job(job)
        if finished:
            return job
    raise AssertionError("unreachable: a resumable stream ends only by raising")


def _seen(last: job_pb2.Job | None, job: job_pb2.Job) -> bool:
    return last is not None and job.version != 0 and job.version <= last.version
