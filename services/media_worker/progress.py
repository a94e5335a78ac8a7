"""Forwarding a running attempt's progress to job_service, and stopping the attempt when
job_service refuses it (canceled, or a newer attempt owns the job)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from services.media_worker.cancellation import Stop, refusal_stop
from services.media_worker.client import WorkerClient

log = logging.getLogger(__name__)

_MAX_MESSAGE_CHARS = 200


class ProgressReporter:
    """Sends the latest progress at most once per interval, in the background.

    The generator never waits for job_service: `update` only records the latest value. If
    job_service refuses a report (FAILED_PRECONDITION or NOT_FOUND), or the job's status events
    say the same first (cancellation.py calls `abort`), the reporter records why and cancels the
    generation task it watches.
    """

    def __init__(
        self, client: WorkerClient, job_id: str, attempt: int, interval_seconds: float
    ) -> None:
        self._client = client
        self._job_id = job_id
        self.attempt = attempt
        self._interval = interval_seconds
        self._latest: tuple[int, str] | None = None
        self._sent: tuple[int, str] | None = None
        # The claim itself just set RUNNING: a job finished within one interval sends nothing.
        self._last_send = time.monotonic()
        self._wake = asyncio.Event()
        self._closing = False
        self._sending = False
        self._target: asyncio.Task[object] | None = None
        self.stop: Stop | None = None  # set when told to stop
        self._task = asyncio.create_task(self._loop(), name=f"progress-{job_id}")

    def watch(self, task: asyncio.Task[object]) -> None:
        self._target = task
        if self.aborted:  # told to stop before the generation even started
            task.cancel()

    @property
    def aborted(self) -> bool:
        return self.stop is not None

    def abort(self, stop: Stop) -> None:
        """Stops the attempt now (the job was canceled or superseded: see cancellation.py)."""
        if self.stop is not None:
            return
        self.stop = stop
        if self._target is not None:
            self._target.cancel()

    async def update(self, progress: int, message: str) -> None:
        # 100 is for the terminal state job_service sets on CompleteJob.
        self._latest = (max(0, min(99, int(progress))), message[:_MAX_MESSAGE_CHARS])
        self._wake.set()

    async def _loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_send + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._latest is None or self._latest == self._sent:
                continue
            progress, message = self._sent = self._latest
            self._last_send = time.monotonic()
            self._sending = True
            try:
                await self._client.report_progress(self._job_id, self.attempt, progress, message)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    log.info("job canceled or superseded, stopping: %s", exc.details())
                    self.abort(refusal_stop(exc))
                    return
                # A lost progress report is harmless; the next one or CompleteJob catches up.
                log.warning("progress report failed: %s", exc.code().name)
            except Exception:
                log.exception("progress report failed")
            finally:
                self._sending = False

    async def close(self, grace_seconds: float) -> None:
        """Stops reporting. A report already in flight may finish first (bounded by
        `grace_seconds`) so that it cannot reach job_service after CompleteJob."""
        self._closing = True
        if not self._sending:
            self._task.cancel()
        try:
            await asyncio.wait({self._task}, timeout=grace_seconds)
        finally:
            self._task.cancel()
