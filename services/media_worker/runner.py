"""One dispatch message, start to finish: claim, generate, store, complete, settle the message.

The protocol with job_service (DESIGN.md, WorkerService):
- ReportProgress(attempt=0) claims the job. FAILED_PRECONDITION (finished, canceled, out of
  attempts) or NOT_FOUND: ack and drop. Anything else (job_service unreachable): nak with a delay.
- While working, throttled ReportProgress under the claimed attempt; FAILED_PRECONDITION there
  means canceled or superseded: stop generating and ack. The job's status events say the same
  sooner (cancellation.py): a cancel stops the generation at once.
- Outputs go to S3, then CompleteJob; the message is acked only after CompleteJob succeeded.
- A failure is reported with CompleteJob too; if job_service puts the job back to QUEUED, the
  message is nak'ed with a backoff delay so JetStream redelivers it for the next attempt.
The message is kept alive with in-progress acks for as long as the worker holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from media.v1 import events_pb2, job_pb2
from services.common import logs, tracing
from services.common.errors import JOB_FINISHED, error_info
from services.media_worker import metrics as worker_metrics
from services.media_worker.backoff import backoff_delay
from services.media_worker.cancellation import CancellationListener, JobWatch, Stop, refusal_stop
from services.media_worker.client import WorkerClient
from services.media_worker.generators.base import (
    GenerationContext,
    GenerationError,
    GenerationResult,
    Generator,
)
from services.media_worker.media_probe import ProbeError, sniff_image_type
from services.media_worker.uploader import InputImageError, Storage, UploadError

log = logging.getLogger(__name__)

_SETTLE_TIMEOUT_SECONDS = 5.0
_MAX_ERROR_CHARS = 2000
_MAX_STATUS_CHARS = 500  # what job_service accepts for a status message
_KEEP_ALIVE_MIN_GAP_SECONDS = 1.0


@dataclass(frozen=True)
class RunnerConfig:
    ack_wait_seconds: float = 30.0
    progress_interval_seconds: float = 0.25
    retry_base_delay_seconds: float = 2.0
    retry_max_delay_seconds: float = 60.0
    complete_attempts: int = 8
    input_image_max_bytes: int = 20 * 1024 * 1024
    work_dir: str = tempfile.gettempdir()


@dataclass(frozen=True)
class _Failure:
    code: job_pb2.ErrorCode.ValueType
    message: str
    retryable: bool


class _Aborted(Exception):
    """The job was canceled or handed to another attempt while this worker held it."""


def _clip(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _settle(
    job_id: str, what: str, action: Callable[..., Awaitable[None]], *args: Any
) -> None:
    """ack/nak/term without letting a NATS hiccup escape: an unsettled message is redelivered
    after ack_wait anyway, and claiming it again is safe."""
    try:
        await asyncio.wait_for(action(*args), _SETTLE_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("could not %s the message: %s", what, exc, extra={"job_id": job_id})


class ProgressReporter:
    """Forwards generator progress to job_service, at most once per interval, in the background.

    The generator never waits for job_service: `update` only records the latest value. If
    job_service answers FAILED_PRECONDITION (canceled, or a newer attempt owns the job), the
    reporter marks itself aborted and cancels the generation task.
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
        self._target: asyncio.Task[Any] | None = None
        self.stop: Stop | None = None  # set when told to stop
        self._task = asyncio.create_task(self._loop(), name=f"progress-{job_id}")

    def watch(self, task: asyncio.Task[Any]) -> None:
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
        self._latest = (max(0, min(99, int(progress))), message[:200])
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
                    log.info(
                        "job canceled or superseded, stopping: %s",
                        exc.details(),
                        extra={"job_id": self._job_id},
                    )
                    self.abort(refusal_stop(exc))
                    return
                # A lost progress report is harmless; the next one or CompleteJob catches up.
                log.warning(
                    "progress report failed: %s", exc.code().name, extra={"job_id": self._job_id}
                )
            except Exception:
                log.exception("progress report failed", extra={"job_id": self._job_id})
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


class JobRunner:
    def __init__(
        self,
        client: WorkerClient,
        generator: Generator,
        storage: Storage,
        config: RunnerConfig,
        listener: CancellationListener | None = None,
    ) -> None:
        self._client = client
        self._generator = generator
        self._storage = storage
        self._config = config
        self._listener = listener or CancellationListener(None)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, self._config.retry_base_delay_seconds, self._config.retry_max_delay_seconds
        )

    async def run(self, msg: Msg) -> None:
        """Handles one message until it is acked, nak'ed or terminated.

        Never raises, except CancelledError on shutdown, after handing the message back.
        """
        try:
            dispatch = events_pb2.JobDispatch.FromString(msg.data)
        except DecodeError:
            dispatch = None
        if dispatch is None or not dispatch.job_id:
            # Redelivering bytes that do not parse would loop forever.
            log.error("undecodable dispatch message on %s, terminating it", msg.subject)
            await _settle("", "terminate", msg.term)
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
        keeper = asyncio.create_task(self._keep_alive(msg, job_id), name=f"keepalive-{job_id}")
        watch: JobWatch | None = None
        try:
            # Listening starts before the claim, so no cancel committed after it is missed.
            watch = await self._listener.watch(job_id)
            await self._run(msg, dispatch, watch)
        except asyncio.CancelledError:
            # Shutdown: hand the job back at once so another worker picks it up.
            log.warning("worker stopping, returning job to the queue", extra={"job_id": job_id})
            await _settle(job_id, "nak", msg.nak)
            raise
        except Exception:
            # A bug in this module; the message comes back later instead of being lost.
            delay = self._backoff(_deliveries(msg))
            log.exception(
                "unexpected error, redelivering in %.1f s", delay, extra={"job_id": job_id}
            )
            await _settle(job_id, "nak", msg.nak, delay)
        finally:
            keeper.cancel()
            if watch is not None:
                await watch.close()

    async def _keep_alive(self, msg: Msg, job_id: str) -> None:
        period = self._config.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(period)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.warning("in-progress ack failed: %s", exc, extra={"job_id": job_id})

    async def _run(
        self, msg: Msg, dispatch: events_pb2.JobDispatch, watch: JobWatch | None = None
    ) -> None:
        job_id = dispatch.job_id
        try:
            job = await self._client.report_progress(job_id, 0, 0, "started")
        except grpc.aio.AioRpcError as exc:
            await self._claim_refused(msg, job_id, exc)
            return
        attempt = job.attempt
        extra = {"job_id": job_id, "attempt": attempt}
        log.info("job claimed", extra=extra)
        if attempt > 1:
            # An earlier attempt may have died after uploading; its objects are nobody's now.
            await self._storage.discard_outputs(
                job_id, lambda a: a < attempt, "left by earlier attempts"
            )
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._config.work_dir))
        try:
            await self._attempt(msg, dispatch, attempt, workdir, watch)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _claim_refused(self, msg: Msg, job_id: str, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            log.info(
                "job not runnable (%s), dropping message", exc.details(), extra={"job_id": job_id}
            )
            reason, metadata = error_info(exc)
            if reason == JOB_FINISHED and metadata.get("status") != "SUCCEEDED":
                # Canceled, or failed with its attempts exhausted, while an attempt that had
                # uploaded was dead: no record will point to anything it stored.
                await self._storage.discard_outputs(
                    job_id, lambda a: True, "the job ended without outputs"
                )
            await _settle(job_id, "ack", msg.ack)
        elif code == grpc.StatusCode.NOT_FOUND:
            log.warning("job unknown to job_service, dropping message", extra={"job_id": job_id})
            await _settle(job_id, "ack", msg.ack)
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            # e.g. a job ID that is not one: no redelivery can fix the message.
            log.error(
                "claim rejected (%s), terminating message", exc.details(), extra={"job_id": job_id}
            )
            await _settle(job_id, "terminate", msg.term)
        else:
            delay = self._backoff(_deliveries(msg))
            log.warning(
                "claim failed (%s: %s), redelivering in %.1f s",
                code.name,
                exc.details(),
                delay,
                extra={"job_id": job_id},
            )
            await _settle(job_id, "nak", msg.nak, delay)

    async def _attempt(
        self,
        msg: Msg,
        dispatch: events_pb2.JobDispatch,
        attempt: int,
        workdir: Path,
        watch: JobWatch | None = None,
    ) -> None:
        job_id = dispatch.job_id
        extra = {"job_id": job_id, "attempt": attempt}
        reporter = ProgressReporter(
            self._client, job_id, attempt, self._config.progress_interval_seconds
        )
        if watch is not None:
            watch.arm(attempt, reporter.abort)
        outcome: tuple[list[job_pb2.Output], GenerationResult, float] | _Failure | None
        try:
            outcome = await self._generate_and_store(msg, dispatch, workdir, reporter)
        except _Aborted:
            outcome = None
        finally:
            if watch is not None:
                watch.disarm()  # from here on the attempt reports its own result
            await reporter.close(grace_seconds=5.0)
        uploaded = isinstance(outcome, tuple)  # (outputs, result, seconds): all stored
        if reporter.stop is not None:  # told to stop (outcome None: while generating)
            if uploaded:
                await self._discard_own(job_id, attempt)
            await self._give_up(msg, job_id, attempt, reporter.stop)
            return
        assert outcome is not None  # only a stop aborts the generation

        try:
            if isinstance(outcome, _Failure):
                log.warning(
                    "job failed: %s",
                    outcome.message,
                    extra={**extra, "code": job_pb2.ErrorCode.Name(outcome.code)},
                )
                job = await self._client.complete_failure(
                    job_id,
                    attempt,
                    outcome.code,
                    outcome.message,
                    retryable=outcome.retryable,
                    attempts=self._config.complete_attempts,
                )
            else:
                outputs, result, seconds = outcome
                job = await self._client.complete_success(
                    job_id,
                    attempt,
                    outputs,
                    model=result.model,
                    generation_seconds=seconds,
                    status_message=_clip("; ".join(result.notes), _MAX_STATUS_CHARS),
                    attempts=self._config.complete_attempts,
                )
        except grpc.aio.AioRpcError as exc:
            await self._complete_refused(msg, job_id, attempt, exc, uploaded)
            return
        if isinstance(outcome, _Failure) and outcome.code == job_pb2.ERROR_CODE_UPLOAD_FAILED:
            await self._discard_own(job_id, attempt)  # what the failed upload left behind

        if job.status == job_pb2.JOB_STATUS_QUEUED:
            delay = self._backoff(attempt)
            log.info("job will be retried; redelivering in %.1f s", delay, extra=extra)
            await _settle(job_id, "nak", msg.nak, delay)
            return
        log.info(
            "job completed",
            extra={**extra, "status": job_pb2.JobStatus.Name(job.status)},
        )
        await _settle(job_id, "ack", msg.ack)

    async def _give_up(self, msg: Msg, job_id: str, attempt: int, stop: Stop) -> None:
        """Ends an attempt that was canceled or superseded, without a result."""
        extra = {"job_id": job_id, "attempt": attempt}
        if stop.job_over:
            log.info("job canceled or superseded (%s); acking", stop.reason, extra=extra)
            await _settle(job_id, "ack", msg.ack)
            return
        # A newer attempt holds a newer delivery of this very message. JetStream settles a
        # message by stream sequence whatever delivery an ack comes from, so acking here would
        # take it from under that attempt: if its worker then died, nothing would redeliver it.
        log.info(
            "job canceled or superseded (%s); leaving the message to the newer attempt",
            stop.reason,
            extra=extra,
        )

    async def _complete_refused(
        self, msg: Msg, job_id: str, attempt: int, exc: grpc.aio.AioRpcError, uploaded: bool
    ) -> None:
        extra = {"job_id": job_id, "attempt": attempt}
        code = exc.code()
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
            # Canceled meanwhile, or a newer attempt owns the job: nothing records this
            # attempt's outputs. (Any other error may hide a commit whose answer was lost, so
            # only a refusal makes them safe to delete.)
            log.info("CompleteJob refused (%s)", exc.details(), extra=extra)
            if uploaded:
                await self._discard_own(job_id, attempt)
            await self._give_up(msg, job_id, attempt, refusal_stop(exc))
            return
        delay = self._backoff(attempt)
        log.error(
            "CompleteJob failed (%s: %s); redelivering in %.1f s",
            code.name,
            exc.details(),
            delay,
            extra=extra,
        )
        await _settle(job_id, "nak", msg.nak, delay)

    async def _discard_own(self, job_id: str, attempt: int) -> None:
        await self._storage.discard_outputs(
            job_id, lambda a: a == attempt, f"attempt {attempt} ended without recording them"
        )

    async def _generate_and_store(
        self,
        msg: Msg,
        dispatch: events_pb2.JobDispatch,
        workdir: Path,
        reporter: ProgressReporter,
    ) -> tuple[list[job_pb2.Output], GenerationResult, float] | _Failure:
        job_id = dispatch.job_id
        try:
            data, mime_type = await self._input_image(dispatch)
        except InputImageError as exc:
            if exc.permanent:
                return _Failure(job_pb2.ERROR_CODE_INVALID_REQUEST, _clip(str(exc)), False)
            return _Failure(job_pb2.ERROR_CODE_INTERNAL, _clip(str(exc)), True)

        last_keep_alive = 0.0

        async def keep_alive() -> None:
            nonlocal last_keep_alive
            now = time.monotonic()
            if now - last_keep_alive >= _KEEP_ALIVE_MIN_GAP_SECONDS:
                last_keep_alive = now
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        ctx = GenerationContext(
            dispatch=dispatch,
            workdir=workdir,
            progress=reporter.update,
            keep_alive=keep_alive,
            input_image=data,
            input_mime_type=mime_type,
        )
        kind = dispatch.WhichOneof("params") or "unknown"
        params = dispatch.image if kind == "image" else dispatch.video
        # The model a failed job is counted under: the one it asked for, else the generator's.
        requested = params.model or getattr(self._generator, "name", "unknown")
        started = time.monotonic()
        with tracing.span("generate", attributes={"media.kind": kind}) as gen_span:
            task = asyncio.create_task(self._generator.generate(ctx), name=f"generate-{job_id}")
            reporter.watch(task)
            try:
                result = await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if reporter.aborted and current is not None and not current.cancelling():
                    raise _Aborted() from None
                raise
            except GenerationError as exc:
                worker_metrics.observe_generation(kind, requested, time.monotonic() - started)
                tracing.set_error(gen_span, exc.message)
                return _Failure(exc.code, _clip(exc.message), exc.retryable)
            except Exception as exc:
                worker_metrics.observe_generation(kind, requested, time.monotonic() - started)
                log.exception("generator raised", extra={"job_id": job_id})
                message = str(exc) or type(exc).__name__
                tracing.set_error(gen_span, message)
                return _Failure(job_pb2.ERROR_CODE_GENERATION_FAILED, _clip(message), False)
            seconds = time.monotonic() - started
            worker_metrics.observe_generation(kind, result.model, seconds)
            gen_span.set_attribute("media.model", result.model)
        log.info(
            "generated %d file(s) in %.3f s",
            len(result.files),
            seconds,
            extra={"job_id": job_id, "model": result.model},
        )
        if reporter.aborted:
            raise _Aborted()
        if not result.files:
            return _Failure(job_pb2.ERROR_CODE_NO_MEDIA, "the generator produced no files", False)
        try:
            with tracing.span("upload", attributes={"media.files": len(result.files)}):
                outputs = await self._storage.store_outputs(job_id, reporter.attempt, result.files)
        except ProbeError as exc:
            return _Failure(
                job_pb2.ERROR_CODE_GENERATION_FAILED, _clip(f"bad output: {exc}"), False
            )
        except UploadError as exc:
            return _Failure(job_pb2.ERROR_CODE_UPLOAD_FAILED, _clip(str(exc)), True)
        worker_metrics.UPLOAD_BYTES.labels(kind).inc(sum(o.byte_size for o in outputs))
        return outputs, result, seconds

    async def _input_image(self, dispatch: events_pb2.JobDispatch) -> tuple[bytes | None, str]:
        which = dispatch.WhichOneof("params")
        params = dispatch.image if which == "image" else dispatch.video
        image = params.input_image
        if image.data:  # inline bytes (job_service normally stores them and sends a key)
            return image.data, image.mime_type or sniff_image_type(image.data)
        if not image.key:
            return None, ""
        data, stored_type = await self._storage.download_input(
            dispatch.job_id,
            image.bucket or self._storage.bucket,
            image.key,
            self._config.input_image_max_bytes,
        )
        return data, image.mime_type or stored_type or sniff_image_type(data)


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
