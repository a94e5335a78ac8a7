"""One dispatch message, start to finish: claim the job, run the attempt, record its result, and
settle the message once.

The protocol with job_service (WorkerService):
- ClaimJob starts a new attempt. A refusal (finished, canceled, out of attempts) or NOT_FOUND:
  the message is acked and dropped. Anything else (job_service unreachable): redelivered later.
- While working, throttled ReportProgress under the claimed attempt (progress.py); a refusal
  there means canceled or superseded: the generation stops. The job's status events say the
  same sooner (cancellation.py).
- Outputs go to S3, then CompleteJob; the message is acked only after CompleteJob succeeded.
- A failure is reported with CompleteJob too; if job_service puts the job back to QUEUED, the
  message is redelivered after a backoff delay for the next attempt.
Each way through ends in one `Settlement` (settlement.py), carried out by `carry_out`. The message
is kept alive with in-progress acks for as long as the worker holds it (keepalive.py).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from media.v1 import events_pb2, job_pb2
from services.common import logs, tracing
from services.common.backoff import backoff_delay
from services.media_worker.cancellation import CancellationListener, JobWatch
from services.media_worker.client import WorkerClient
from services.media_worker.generation import Aborted, Failed, Outcome, Production, Stored, clip
from services.media_worker.generators.base import Generator
from services.media_worker.keepalive import KeepAlive
from services.media_worker.progress import ProgressReporter
from services.media_worker.settings import WorkerSettings
from services.media_worker.settlement import (
    Attempts,
    Settlement,
    after_claim_error,
    after_complete,
    after_complete_error,
    after_stop,
    carry_out,
    handed_back,
    undecodable,
    unexpected,
)
from services.media_worker.uploader import Storage

log = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 500  # what job_service accepts for a status message
# A progress report in flight when the attempt ends may finish for this long, so that it cannot
# reach job_service after CompleteJob.
_PROGRESS_CLOSE_SECONDS = 5.0


class JobRunner:
    def __init__(
        self,
        client: WorkerClient,
        generator: Generator,
        storage: Storage,
        settings: WorkerSettings,
        listener: CancellationListener,
    ) -> None:
        self._client = client
        self._storage = storage
        self._settings = settings
        self._listener = listener
        self._production = Production(generator, storage, settings.max_input_image_bytes)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, self._settings.retry_base_delay_seconds, self._settings.retry_max_delay_seconds
        )

    async def run(self, msg: Msg) -> None:
        """Handles one message until it is settled.

        Never raises, except CancelledError on shutdown, after handing the message back.
        """
        try:
            dispatch = events_pb2.JobDispatch.FromString(msg.data)
        except DecodeError:
            dispatch = None
        if dispatch is None or not dispatch.job_id:
            await carry_out(undecodable(msg.subject), msg, self._storage, "")
            return
        # Every line logged for this job carries its ID, and the work continues the trace of
        # the call that queued it (the trace context rides in the message headers).
        with (
            logs.job_context(dispatch.job_id),
            tracing.span(
                f"process {msg.subject}",
                parent=tracing.context_from_headers(msg.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": msg.subject,
                    "media.job_id": dispatch.job_id,
                },
            ),
        ):
            await self._handle(msg, dispatch)

    async def _handle(self, msg: Msg, dispatch: events_pb2.JobDispatch) -> None:
        job_id = dispatch.job_id
        keep_alive = KeepAlive(msg, self._settings.ack_wait_seconds)
        try:
            try:
                settlement = await self._settlement_of(msg, dispatch, keep_alive)
            finally:
                keep_alive.stop()  # no in-progress ack after the settlement
            await carry_out(settlement, msg, self._storage, job_id)
        except asyncio.CancelledError:
            # Shutdown: hand the job back at once so another worker picks it up.
            await carry_out(handed_back(), msg, self._storage, job_id)
            raise

    async def _settlement_of(
        self, msg: Msg, dispatch: events_pb2.JobDispatch, keep_alive: KeepAlive
    ) -> Settlement:
        """Runs the delivery up to the point where it is known how it ends."""
        watch: JobWatch | None = None
        try:
            # Listening starts before the claim, so no cancel committed after it is missed.
            watch = await self._listener.watch(dispatch.job_id)
            return await self._claim_and_run(msg, dispatch, watch, keep_alive)
        except Exception:
            log.exception("unexpected error")
            return unexpected(self._backoff(_deliveries(msg)))
        finally:
            if watch is not None:
                await watch.close()

    async def _claim_and_run(
        self,
        msg: Msg,
        dispatch: events_pb2.JobDispatch,
        watch: JobWatch,
        keep_alive: KeepAlive,
    ) -> Settlement:
        job_id = dispatch.job_id
        try:
            job = await self._client.claim(job_id)
        except grpc.aio.AioRpcError as exc:
            return after_claim_error(exc, self._backoff(_deliveries(msg)))
        attempt = job.attempt
        log.info("job claimed", extra={"attempt": attempt})
        earlier = Attempts.before(attempt)
        if earlier is not None:
            # An earlier attempt may have died after uploading; its objects are nobody's now.
            # They go before this attempt stores anything, so that once the job is finished
            # its prefix holds only what it records.
            await self._storage.discard_outputs(job_id, earlier, "left by earlier attempts")
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._settings.work_dir))
        try:
            return await self._attempt(dispatch, attempt, workdir, watch, keep_alive)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _attempt(
        self,
        dispatch: events_pb2.JobDispatch,
        attempt: int,
        workdir: Path,
        watch: JobWatch,
        keep_alive: KeepAlive,
    ) -> Settlement:
        job_id = dispatch.job_id
        reporter = ProgressReporter(
            self._client, job_id, attempt, self._settings.progress_interval_seconds
        )
        watch.arm(attempt, reporter.abort)
        outcome: Outcome | None = None  # None: stopped while generating, nothing stored
        try:
            outcome = await self._production.run(dispatch, workdir, reporter, keep_alive.beat)
        except Aborted:
            pass
        finally:
            watch.disarm()  # from here on the attempt reports its own result
            await reporter.close(_PROGRESS_CLOSE_SECONDS)
        left_objects = outcome is not None and outcome.left_objects
        if reporter.stop is not None:  # told to stop, while generating or since
            return after_stop(reporter.stop, attempt, left_objects=left_objects)
        assert outcome is not None  # only a stop aborts the generation
        delay = self._backoff(attempt)
        try:
            job = await self._complete(job_id, attempt, outcome)
        except grpc.aio.AioRpcError as exc:
            return after_complete_error(exc, attempt, left_objects=left_objects, delay=delay)
        upload_failed = isinstance(outcome, Failed) and outcome.left_objects
        return after_complete(job.status, attempt, upload_failed=upload_failed, delay=delay)

    async def _complete(self, job_id: str, attempt: int, outcome: Outcome) -> job_pb2.Job:
        attempts = self._settings.complete_attempts
        match outcome:
            case Failed(code=code, message=message, retryable=retryable):
                log.warning(
                    "job failed: %s",
                    message,
                    extra={"attempt": attempt, "code": job_pb2.ErrorCode.Name(code)},
                )
                return await self._client.complete_failure(
                    job_id, attempt, code, message, retryable=retryable, attempts=attempts
                )
            case Stored(outputs=outputs, model=model, notes=notes, seconds=seconds):
                return await self._client.complete_success(
                    job_id,
                    attempt,
                    outputs,
                    model=model,
                    generation_seconds=seconds,
                    status_message=clip("; ".join(notes), _MAX_STATUS_CHARS),
                    attempts=attempts,
                )


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
