"""Hearing at once that a running job was canceled or taken over by another attempt.

While it holds a job, the worker subscribes (core NATS) to the job's status events,
media.events.*.<job_id> (whoever owns it), which job_service publishes after every change. The
subscription is made before the claim, so every change committed after the claim reaches it. An
event that says the job is finished (canceled by its owner, or completed elsewhere) or that a
newer attempt owns it fires the stop callback, which cancels the generation there and then,
instead of at the next ReportProgress. That refusal stays the fallback for an event lost to a
NATS outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from media.v1 import events_pb2, job_pb2
from services.common import jetstream, lifecycle
from services.common.errors import refusal_of
from services.common.jetstream import job_events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stop:
    """Why an attempt must stop. job_over: the job itself is finished (canceled, or completed
    elsewhere), rather than handed to a newer attempt that now holds its message."""

    reason: str
    job_over: bool


StopFn = Callable[[Stop], None]


def stop_reason(job: job_pb2.Job, attempt: int) -> Stop | None:
    """Why attempt `attempt` must stop, given the job's state `job`; None: carry on."""
    if job.status == lifecycle.CANCELED:
        return Stop("canceled by its owner", job_over=True)
    if job.attempt > attempt:
        return Stop(f"attempt {attempt} superseded by attempt {job.attempt}", job_over=False)
    # Finished under our own attempt is our own result (the watch is disarmed by then).
    if lifecycle.is_finished(job.status) and job.attempt != attempt:
        return Stop(f"already {lifecycle.status_name(job.status)}", job_over=True)
    return None


def refusal_stop(exc: grpc.aio.AioRpcError) -> Stop:
    """The Stop a WorkerService refusal (FAILED_PRECONDITION or NOT_FOUND) means: only a stale
    attempt (reason ATTEMPT_STALE) leaves the job, and its message, to a newer attempt."""
    refusal = refusal_of(exc)
    stale = refusal is not None and refusal.reason == lifecycle.Reason.ATTEMPT_STALE
    return Stop(exc.details() or exc.code().name, job_over=not stale)


class JobWatch:
    """The status events of one job while this worker holds it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._sub: Subscription | None = None
        self._latest: job_pb2.Job | None = None
        self._attempt = 0
        self._on_stop: StopFn | None = None

    def arm(self, attempt: int, on_stop: StopFn) -> None:
        """From now on, an event that ends `attempt` calls on_stop (once). Events that arrived
        between the subscription and the claim are looked at first."""
        self._attempt = attempt
        self._on_stop = on_stop
        if self._latest is not None:
            self._consider(self._latest)

    def disarm(self) -> None:
        """No more stops: the attempt is over and reports its own result now."""
        self._on_stop = None

    async def _on_message(self, msg: Msg) -> None:
        event = events_pb2.JobEvent()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            return
        if event.job.id != self.job_id:
            return
        if self._latest is None or event.job.version > self._latest.version:
            self._latest = event.job
        if self._on_stop is not None:
            self._consider(event.job)

    def _consider(self, job: job_pb2.Job) -> None:
        reason = stop_reason(job, self._attempt)
        if reason is None or self._on_stop is None:
            return
        on_stop, self._on_stop = self._on_stop, None
        log.info("stop signal received: %s", reason.reason, extra={"job_id": self.job_id})
        on_stop(reason)

    async def close(self) -> None:
        self.disarm()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class CancellationListener:
    def __init__(self, nc: Client | None, *, flush_timeout_seconds: float = 2.0) -> None:
        self._nc = nc
        self._flush_timeout = flush_timeout_seconds

    async def watch(self, job_id: str) -> JobWatch:
        """Subscribes to the job's events and waits until the server has the subscription.
        Never raises: without NATS the watch stays silent and ReportProgress's refusal stops the
        attempt instead."""
        watch = JobWatch(job_id)
        if self._nc is None or not self._nc.is_connected:
            return watch
        try:
            watch._sub = await self._nc.subscribe(job_events(job_id), cb=watch._on_message)
            # The claim must not go out before the server knows about the subscription.
            await jetstream.flush(self._nc, self._flush_timeout)
        except asyncio.CancelledError:
            await watch.close()
            raise
        except Exception as exc:
            log.warning(
                "cannot listen for cancellation (%r); relying on progress reports",
                exc,
                extra={"job_id": job_id},
            )
        return watch
