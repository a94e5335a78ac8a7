"""Following a job through NotifierService.WatchJob, reconnecting when the stream breaks.

Reconnecting is safe because a watch starts with the job's current state; events the watcher has
already seen (by job.version) are skipped, so nothing is shown twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import grpc

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common.backoff import backoff_delay
from services.common.lifecycle import FINISHED

# A connection that broke (server restart, load balancer, max connection age) or never came up.
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


class WatchError(Exception):
    """The watch could not follow the job to a terminal state."""


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 0.25
    max_seconds: float = 5.0
    max_failures: int = 6  # consecutive broken connections that brought no news
    healthy_after_seconds: float = 30.0  # a stream that lived this long was not a failure

    def delay(self, failures: int) -> float:
        # Jittered, so that many watchers cut off together do not reconnect together.
        return backoff_delay(failures, self.initial_seconds, self.max_seconds)


def watch_job(
    stub: notifier_service_pb2_grpc.NotifierServiceStub,
    job_id: str,
    metadata: Sequence[tuple[str, str]],
    on_job: Callable[[job_pb2.Job], None],
    *,
    on_reconnect: Callable[[str, float], None] = lambda reason, delay: None,
    backoff: Backoff = Backoff(),  # frozen, so one shared default is harmless
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> job_pb2.Job:
    """Calls `on_job` with each new state and returns the terminal job.

    Raises grpc.RpcError for a status other than UNAVAILABLE (NOT_FOUND, UNAUTHENTICATED, ...) or
    when reconnecting keeps failing, and WatchError when the stream keeps ending early.
    """
    request = notifier_service_pb2.WatchJobRequest(job_id=job_id)
    last: job_pb2.Job | None = None
    failures = 0
    while True:
        call = stub.WatchJob(request, metadata=tuple(metadata))
        connected_at = clock()
        error: grpc.RpcError | None = None
        try:
            for response in call:
                job = response.job
                terminal = job.status in FINISHED
                if _seen(last, job) and not terminal:
                    continue  # the replay after a reconnect
                failures = 0  # news arrived, so the connection works
                last = job
                on_job(job)
                if terminal:
                    return job
            reason = "the stream ended before the job finished"
        except grpc.RpcError as exc:
            code = cast(grpc.Call, exc).code()
            if code not in RECONNECT_CODES:
                raise
            error = exc
            reason = f"{code.name}: {cast(grpc.Call, exc).details()}"
        finally:
            # A no-op when finished; frees the stream otherwise. grpc-stubs 1.53 (installed by
            # googleapis-common-protos-stubs over types-grpcio's files) leaves cancel() untyped;
            # types-grpcio types it, hence "unused-ignore" as well.
            call.cancel()  # type: ignore[no-untyped-call, unused-ignore]
        if clock() - connected_at >= backoff.healthy_after_seconds:
            # A long-lived stream cut off (max connection age, a restart) without news, e.g.
            # while the job waits in the queue: not a failed connection.
            failures = 0
        failures += 1
        if failures > backoff.max_failures:
            if error is not None:
                raise error
            raise WatchError(reason)
        delay = backoff.delay(failures)
        on_reconnect(reason, delay)
        sleep(delay)


def _seen(last: job_pb2.Job | None, job: job_pb2.Job) -> bool:
    return last is not None and job.version != 0 and job.version <= last.version
