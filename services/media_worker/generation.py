"""What one attempt makes: fetch the input image, run the generator, probe and store its files.

The answer is an `Outcome`: `Stored` (every output is in the bucket, for CompleteJob to record)
or `Failed` (the code, message and retryability CompleteJob reports). A stop (cancel, or a newer
attempt: see cancellation.py) cancels the generation and raises `Aborted`.

A failure's message is what the job's owner reads (status_message, error.message): what failed,
in plain words, and whether the job will be retried. Exception texts name endpoints, object
keys and local paths, so they go to the log (which carries the job ID), never into the message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from media.v1 import events_pb2, job_pb2
from services.common import images, lifecycle, tracing
from services.media_worker import metrics as worker_metrics
from services.media_worker.generators.base import (
    GenerationContext,
    GenerationError,
    Generator,
    KeepAliveFn,
)
from services.media_worker.media_probe import ProbeError
from services.media_worker.progress import ProgressReporter
from services.media_worker.uploader import InputImageError, Storage, UploadError

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000

# What the job's owner is told when something other than the generator's own words fails (the
# detail is logged). The input image's are InputImageError.public (uploader.py).
OUTPUT_NOT_STORED = "the output could not be stored"
BAD_OUTPUT = "the generator produced a file that is not a valid image or video"
GENERATOR_CRASHED = "the generator failed unexpectedly"
RETRIED = "; retried while the job has attempts left"
NOT_RETRIED = "; the job will not be retried"


@dataclass(frozen=True)
class Stored:
    outputs: list[job_pb2.Output]
    model: str
    notes: list[str] = field(default_factory=list)  # how the model adapted the parameters
    seconds: float = 0.0  # time the generator took

    @property
    def left_objects(self) -> bool:
        """Whether the attempt may have put objects in the bucket."""
        return True


@dataclass(frozen=True)
class Failed:
    code: lifecycle.ErrorCode
    message: str
    retryable: bool

    @property
    def left_objects(self) -> bool:
        # An upload that failed part way may have stored some outputs.
        return self.code == job_pb2.ERROR_CODE_UPLOAD_FAILED


Outcome = Stored | Failed


class Aborted(Exception):
    """The attempt was told to stop (canceled, or a newer attempt owns the job)."""


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failed(code: lifecycle.ErrorCode, what: str, *, retryable: bool) -> Failed:
    """A failure whose message says what failed and whether the job will be retried (job_service
    retries it only while attempts are left, hence the wording)."""
    suffix = RETRIED if retryable else NOT_RETRIED
    return Failed(code, clip(what, MAX_ERROR_CHARS - len(suffix)) + suffix, retryable)


class Production:
    """Runs one attempt's work; one instance serves every job of the worker."""

    def __init__(self, generator: Generator, storage: Storage, max_input_image_bytes: int) -> None:
        self._generator = generator
        self._storage = storage
        self._max_input_image_bytes = max_input_image_bytes

    async def run(
        self,
        dispatch: events_pb2.JobDispatch,
        workdir: Path,
        reporter: ProgressReporter,
        keep_alive: KeepAliveFn,
    ) -> Outcome:
        """Raises Aborted when `reporter` is told to stop."""
        job_id = dispatch.job_id
        try:
            data, mime_type = await self._input_image(dispatch)
        except InputImageError as exc:
            log.warning("input image unusable: %s", exc)
            if exc.permanent:
                return failed(job_pb2.ERROR_CODE_INVALID_REQUEST, exc.public, retryable=False)
            return failed(job_pb2.ERROR_CODE_INTERNAL, exc.public, retryable=True)
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
                # Told to stop, rather than this task itself being cancelled (shutdown).
                if reporter.aborted and current is not None and not current.cancelling():
                    raise Aborted() from None
                raise
            except GenerationError as exc:
                worker_metrics.observe_generation(kind, requested, time.monotonic() - started)
                tracing.set_error(gen_span, exc.message)
                # The generators' own words: they name no endpoint, path or secret.
                return failed(exc.code, exc.message, retryable=exc.retryable)
            except Exception as exc:
                worker_metrics.observe_generation(kind, requested, time.monotonic() - started)
                log.exception("generator raised")
                tracing.set_error(gen_span, str(exc) or type(exc).__name__)
                # A bug or a library's surprise: its text may hold anything.
                return failed(
                    job_pb2.ERROR_CODE_GENERATION_FAILED, GENERATOR_CRASHED, retryable=False
                )
            seconds = time.monotonic() - started
            worker_metrics.observe_generation(kind, result.model, seconds)
            gen_span.set_attribute("media.model", result.model)
        log.info(
            "generated %d file(s) in %.3f s",
            len(result.files),
            seconds,
            extra={"model": result.model},
        )
        if reporter.aborted:
            raise Aborted()
        if not result.files:
            return failed(
                job_pb2.ERROR_CODE_NO_MEDIA, "the generator produced no files", retryable=False
            )
        try:
            with tracing.span("upload", attributes={"media.files": len(result.files)}):
                outputs = await self._storage.store_outputs(job_id, reporter.attempt, result.files)
        except ProbeError as exc:
            log.warning("bad output: %s", exc)
            return failed(job_pb2.ERROR_CODE_GENERATION_FAILED, BAD_OUTPUT, retryable=False)
        except UploadError as exc:
            log.warning("upload failed: %s", exc)
            return failed(job_pb2.ERROR_CODE_UPLOAD_FAILED, OUTPUT_NOT_STORED, retryable=True)
        worker_metrics.UPLOAD_BYTES.labels(kind).inc(sum(o.byte_size for o in outputs))
        return Stored(outputs, result.model, list(result.notes), seconds)

    async def _input_image(self, dispatch: events_pb2.JobDispatch) -> tuple[bytes | None, str]:
        which = dispatch.WhichOneof("params")
        params = dispatch.image if which == "image" else dispatch.video
        image = params.input_image
        if image.data:  # inline bytes (job_service normally stores them and sends a key)
            data, stored_type = image.data, ""
        elif image.key:
            data, stored_type = await self._storage.download_input(
                dispatch.job_id,
                image.bucket or self._storage.bucket,
                image.key,
                self._max_input_image_bytes,
            )
        else:
            return None, ""
        # Checked again here, from the header, whatever job_service checked: the stored object
        # is what gets decoded.
        header = images.read_header(data)
        if header is None:
            raise InputImageError(
                "the input image is not a PNG, JPEG or WEBP image", permanent=True
            )
        too_large = header.too_large()
        if too_large is not None:
            raise InputImageError(f"the input image {too_large}", permanent=True)
        return data, image.mime_type or stored_type or header.content_type
