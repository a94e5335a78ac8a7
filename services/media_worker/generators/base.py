"""What every generator implements: turn one dispatched job into files on local disk.

Generators write into `workdir` (a fresh temporary directory per attempt) so that large videos
are never held in memory; the worker reads sizes and checksums from those files and uploads them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from media.v1 import events_pb2, job_pb2

# progress 0-100 and a short message; the worker throttles and forwards it to job_service.
ProgressFn = Callable[[int, str], Awaitable[None]]
# Keeps the JetStream message alive during a long wait (in-progress ack); cheap to call often.
KeepAliveFn = Callable[[], Awaitable[None]]


@dataclass
class GeneratedFile:
    path: Path
    content_type: str  # e.g. image/png, video/mp4


@dataclass
class GenerationResult:
    files: list[GeneratedFile]
    model: str  # the model that produced the files ("local" for the local generator)
    # How parameters were adapted to what the model can do; shown in the job's status message.
    notes: list[str] = field(default_factory=list)


@dataclass
class GenerationContext:
    dispatch: events_pb2.JobDispatch
    workdir: Path
    progress: ProgressFn
    keep_alive: KeepAliveFn
    input_image: bytes | None = None  # already fetched from object storage
    input_mime_type: str = ""


class GenerationError(Exception):
    """A failure the job should record with a specific code.

    retryable: the cause may pass (rate limit, 5xx, timeout); the job goes back to QUEUED while
    attempts remain. Everything else (safety block, bad request, no media) fails the job at once.
    """

    def __init__(self, code: job_pb2.ErrorCode.ValueType, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class Generator(Protocol):
    name: str

    async def generate(self, ctx: GenerationContext) -> GenerationResult: ...
