"""`mediactl watch --all`: the live feed of the caller's jobs through NotifierService.WatchJobs.

The first stream has no cursor, so it opens with the caller's unfinished jobs and then
`snapshot_done`; every stream after a break starts after the last cursor. What the feed has shown
is kept by job ID and version, so a replay (a server without cursors, a re-list after a reset)
shows nothing twice. A reset (the cursor is older than the server keeps) is answered by listing
the jobs again with ListJobs and showing those that changed in the gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common.lifecycle import FINISHED
from services.mediactl.resume import Backoff, Metadata, ResumableStream, StreamCall
from services.mediactl.tokens import TokenSource

# A feed runs until it is interrupted, so it never gives up reconnecting.
FEED_BACKOFF = Backoff(max_failures=None)


class FeedSink(Protocol):
    """Where the feed's news goes (text or JSON lines; a test's list)."""

    def job(self, response: notifier_service_pb2.WatchJobsResponse) -> None: ...

    def snapshot_done(
        self, response: notifier_service_pb2.WatchJobsResponse, jobs: int
    ) -> None: ...

    def reset(
        self,
        response: notifier_service_pb2.WatchJobsResponse,
        relisted: Sequence[job_pb2.Job] | None,
    ) -> None:
        """`relisted`: the jobs that changed while the feed could not see them, or None when
        they could not be listed."""
        ...

    def reconnecting(self, reason: str, delay: float) -> None: ...


def _moment(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass
class FeedState:
    """What the feed has shown: each job's last version, whether the snapshot is done, and the
    latest moment the server spoke of (job changes and heartbeats)."""

    kinds: frozenset[int] = frozenset()  # the feed's filters (empty: all)
    statuses: frozenset[int] = frozenset()
    versions: dict[str, int] = field(default_factory=dict)
    snapshot_jobs: int = 0  # jobs shown before the snapshot was done
    snapshot_done: bool = False
    # Before the server has named a time, the client's clock: a reset then re-shows only what
    # changed since the feed started, not the caller's whole history.
    watermark: datetime = field(default_factory=lambda: datetime.now(UTC))

    def accept(self, job: job_pb2.Job) -> bool:
        """Whether `job` is news (a job not shown yet, or a newer version), and records it."""
        known = self.versions.get(job.id)
        if known is not None and job.version <= known:
            return False
        self.versions[job.id] = job.version
        if not self.snapshot_done:
            self.snapshot_jobs += 1
        if job.HasField("update_time"):
            self.heard(job.update_time)
        return True

    def heard(self, stamp: Timestamp) -> None:
        self.watermark = max(self.watermark, _moment(stamp))

    def relisted(self, jobs: Iterable[job_pb2.Job]) -> list[job_pb2.Job]:
        """After a reset: the listed jobs the feed would have shown had it not lost track, oldest
        change first (and recorded as shown)."""
        since = self.watermark
        news: list[job_pb2.Job] = []
        for job in jobs:
            if (self.kinds and job.kind not in self.kinds) or (
                self.statuses and job.status not in self.statuses
            ):
                continue
            if job.id not in self.versions and job.status in FINISHED:
                # Never shown and finished: news only if it finished in the gap (else it is
                # history the feed never showed, and need not show now).
                if not job.HasField("update_time") or _moment(job.update_time) < since:
                    continue
            news.append(job)
        news.sort(key=lambda job: (_moment(job.update_time), job.version))
        return [job for job in news if self.accept(job)]


def watch_feed(
    stub: notifier_service_pb2_grpc.NotifierServiceStub,
    tokens: TokenSource,
    sink: FeedSink,
    *,
    kinds: Sequence[int] = (),
    statuses: Sequence[int] = (),
    relist: Callable[[], Iterable[job_pb2.Job] | None] | None = None,
    backoff: Backoff = FEED_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    state: FeedState | None = None,
) -> NoReturn:
    """Follows the caller's jobs until interrupted (KeyboardInterrupt) or an error that
    reconnecting cannot mend (raised: grpc.RpcError, WatchError). `relist` reads every job again
    after a reset, or returns None when it could not (having said why); without it a reset is
    only reported."""
    state = state or FeedState(frozenset(kinds), frozenset(statuses))

    def open_stream(
        cursor: str, metadata: Metadata
    ) -> StreamCall[notifier_service_pb2.WatchJobsResponse]:
        request = notifier_service_pb2.WatchJobsRequest(
            kinds=kinds,  # type: ignore[arg-type]  # ints are what the enum values are
            statuses=statuses,  # type: ignore[arg-type]
            cursor=cursor,
        )
        return stub.WatchJobs(request, metadata=metadata)

    stream = ResumableStream(
        open_stream,
        tokens,
        backoff=backoff,
        on_reconnect=sink.reconnecting,
        sleep=sleep,
        clock=clock,
    )
    for response in stream:
        event = response.WhichOneof("event")
        if event == "heartbeat":
            state.heard(response.heartbeat.time)  # keeps the cursor moving; nothing to show
        elif event == "job":
            if state.accept(response.job):
                stream.progressed()
                sink.job(response)
        elif event == "snapshot_done":
            stream.progressed()
            # Shown once: a stream reopened without a cursor (none had come yet) sends the
            # snapshot again, and its jobs are dropped as already shown.
            if not state.snapshot_done:
                state.snapshot_done = True
                sink.snapshot_done(response, state.snapshot_jobs)
        elif event == "reset":
            stream.progressed()
            listed = relist() if relist is not None else None
            sink.reset(response, state.relisted(listed) if listed is not None else None)
    raise AssertionError("unreachable: a resumable stream ends only by raising")
