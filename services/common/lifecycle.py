"""The life of a job: its vocabulary and every rule about how it changes. Pure: no I/O.

    create ──▶ QUEUED ──claim──▶ RUNNING ──succeed──▶ SUCCEEDED
                 ▲                 │  │ ──fail final──▶ FAILED
                 └─fail retryable──┘  │ ──attempts exhausted──▶ FAILED (ATTEMPTS_EXHAUSTED)
    QUEUED or RUNNING ──cancel──▶ CANCELED

`decide(state, command)` answers every command with a `Transition` (the job's next state and the
messages to publish), `Unchanged` (a repeat: nothing to write) or a `Refusal` (a reason and the
job's status, for the caller to map to an error). job_service's store locks the row, asks here and
writes what it is told; the servicers map refusals to gRPC errors; the worker, the notifier, the
CLI, the bench and the tests read the vocabulary from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TypeAlias

from media.v1 import job_pb2

# --- vocabulary -------------------------------------------------------------------------------

Status: TypeAlias = job_pb2.JobStatus.ValueType
Kind: TypeAlias = job_pb2.MediaKind.ValueType
ErrorCode: TypeAlias = job_pb2.ErrorCode.ValueType

QUEUED: Status = job_pb2.JOB_STATUS_QUEUED
RUNNING: Status = job_pb2.JOB_STATUS_RUNNING
SUCCEEDED: Status = job_pb2.JOB_STATUS_SUCCEEDED
FAILED: Status = job_pb2.JOB_STATUS_FAILED
CANCELED: Status = job_pb2.JOB_STATUS_CANCELED

FINISHED: frozenset[Status] = frozenset({SUCCEEDED, FAILED, CANCELED})
ACTIVE: frozenset[Status] = frozenset({QUEUED, RUNNING})
STATUSES: tuple[Status, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)

IMAGE: Kind = job_pb2.MEDIA_KIND_IMAGE
VIDEO: Kind = job_pb2.MEDIA_KIND_VIDEO
# The kind's name is what subjects, consumers, metrics labels and the CLI use.
KIND_NAMES: dict[Kind, str] = {IMAGE: "image", VIDEO: "video"}
KINDS_BY_NAME: dict[str, Kind] = {name: kind for kind, name in KIND_NAMES.items()}
KINDS: tuple[str, ...] = tuple(KIND_NAMES.values())


class EventType(enum.StrEnum):
    """What a change was, in the words webhooks, events and notifications use."""

    QUEUED = "job.queued"  # created, or queued again for a retry
    RUNNING = "job.running"  # a worker started an attempt
    PROGRESS = "job.progress"  # a running attempt reported progress
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


EVENT_TYPES: tuple[str, ...] = tuple(EventType)
# A webhook endpoint that names no event types gets these.
FINISHED_EVENT_TYPES: tuple[str, ...] = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)
_EVENT_OF_STATUS: dict[Status, EventType] = {
    QUEUED: EventType.QUEUED,
    RUNNING: EventType.RUNNING,
    SUCCEEDED: EventType.SUCCEEDED,
    FAILED: EventType.FAILED,
    CANCELED: EventType.CANCELED,
}


def status_name(status: Status) -> str:
    """ "SUCCEEDED" for JOB_STATUS_SUCCEEDED: the one spelling in logs, errors and metadata."""
    return job_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def status_from_name(name: str) -> Status | None:
    """The status that `status_name` spells `name` (None: not a status), e.g. when reading the
    `status` of a refusal's ErrorInfo."""
    try:
        return job_pb2.JobStatus.Value(f"JOB_STATUS_{name.upper()}")
    except ValueError:
        return None


def kind_name(kind: Kind) -> str:
    return KIND_NAMES.get(kind, "unknown")


def is_finished(status: Status) -> bool:
    return status in FINISHED


# --- state and commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """What the rules look at and change; the store keeps the rest (params, times, outputs)."""

    status: Status
    attempt: int = 0
    progress: int = 0
    status_message: str = ""
    error_code: ErrorCode = job_pb2.ERROR_CODE_UNSPECIFIED
    error_message: str = ""
    # Digest of the CompleteJob request that finished the job, so that a repeat is recognised.
    result_digest: bytes | None = None


@dataclass(frozen=True)
class Create:
    pass


@dataclass(frozen=True)
class Claim:
    """A worker starts a new attempt of a dispatched job."""

    max_attempts: int


@dataclass(frozen=True)
class Progress:
    attempt: int
    progress: int
    message: str


@dataclass(frozen=True)
class Succeed:
    attempt: int
    result_digest: bytes
    status_message: str = ""


@dataclass(frozen=True)
class FailRetryable:
    """A failure that another attempt may not meet (an outage, a timeout)."""

    attempt: int
    code: ErrorCode
    message: str
    result_digest: bytes
    max_attempts: int


@dataclass(frozen=True)
class FailFinal:
    attempt: int
    code: ErrorCode
    message: str
    result_digest: bytes


@dataclass(frozen=True)
class ExhaustAttempts:
    """The job has had every attempt it may have. `cause` says what the last one met."""

    cause: str
    result_digest: bytes | None = None


@dataclass(frozen=True)
class Cancel:
    pass


Command = Create | Claim | Progress | Succeed | FailRetryable | FailFinal | ExhaustAttempts | Cancel


class Emit(enum.Enum):
    """A message the store queues in its outbox with the change."""

    DISPATCH = "dispatch"  # media.dispatch.<kind>: work for a worker
    STATUS = "status"  # media.events.<job_id>: the job as it is now


class Reason(enum.StrEnum):
    """Why a command is refused: the ErrorInfo reason clients and workers read."""

    JOB_FINISHED = "JOB_FINISHED"  # the job is finished; the command no longer applies
    ATTEMPT_STALE = "ATTEMPT_STALE"  # another attempt owns the job, or it is not running
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_EXISTS = "JOB_EXISTS"


@dataclass(frozen=True)
class Transition:
    state: JobState
    emit: tuple[Emit, ...] = (Emit.STATUS,)
    # Refused after the change is committed: a claim that finds no attempt left fails the job
    # and is then refused.
    then_refuse: Refusal | None = None
    progress_only: bool = False  # a running attempt's progress, not a change of status

    @property
    def finished(self) -> bool:
        return self.state.status in FINISHED

    @property
    def event_type(self) -> EventType:
        return EventType.PROGRESS if self.progress_only else _EVENT_OF_STATUS[self.state.status]


@dataclass(frozen=True)
class Unchanged:
    """A repeat of what the job already reflects (a second cancel, the same result again)."""


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str
    status: Status | None  # the job's status (None: no job)


class Refused(Exception):
    """Raised by the store with the core's refusal; the servicers turn it into an RPC error."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


Decision = Transition | Unchanged | Refusal


# --- the rules --------------------------------------------------------------------------------


def create() -> Transition:
    """How every job starts: QUEUED, dispatched to a worker."""
    return Transition(JobState(QUEUED, status_message="queued"), (Emit.DISPATCH, Emit.STATUS))


def decide(state: JobState | None, command: Command) -> Decision:
    """What `command` does to a job in `state` (None: no such job yet)."""
    if isinstance(command, Create):
        if state is not None:
            return Refusal(Reason.JOB_EXISTS, "the job exists already", state.status)
        return create()
    if state is None:
        return Refusal(Reason.JOB_NOT_FOUND, "no such job", None)
    match command:
        case Claim(max_attempts=max_attempts):
            return _claim(state, max_attempts)
        case Progress():
            return _progress(state, command)
        case Succeed() | FailRetryable() | FailFinal():
            return _complete(state, command)
        case ExhaustAttempts(cause=cause, result_digest=result_digest):
            if state.status in FINISHED:
                return _finished(state)
            return _exhaust(state, cause, result_digest)
        case Cancel():
            if state.status == CANCELED:
                return Unchanged()
            if state.status in FINISHED:
                return _finished(state, " and can no longer be canceled")
            return Transition(
                replace(state, status=CANCELED, status_message="canceled by the owner")
            )
    raise TypeError(f"not a command: {command!r}")


def _claim(state: JobState, max_attempts: int) -> Decision:
    if state.status in FINISHED:
        return _finished(state)
    if state.attempt >= max_attempts:
        cause = state.error_message or "the worker stopped without reporting"
        failed = _exhaust(state, cause, None)
        refusal = Refusal(Reason.JOB_FINISHED, "the job has exhausted its attempts", FAILED)
        return replace(failed, then_refuse=refusal)
    attempt = state.attempt + 1
    return Transition(
        replace(
            state,
            status=RUNNING,
            attempt=attempt,
            progress=0,
            status_message=f"started (attempt {attempt})",
        )
    )


def _progress(state: JobState, command: Progress) -> Decision:
    stale = _check_attempt(state, command.attempt)
    if stale is not None:
        return stale
    if state.progress == command.progress and state.status_message == command.message:
        return Unchanged()
    return Transition(
        replace(state, progress=command.progress, status_message=command.message),
        progress_only=True,
    )


def _complete(state: JobState, command: Succeed | FailRetryable | FailFinal) -> Decision:
    if state.status in FINISHED:
        if state.result_digest == command.result_digest:
            return Unchanged()  # CompleteJob repeated after a lost answer
        return _finished(state, "; a different result cannot be recorded")
    stale = _check_attempt(state, command.attempt)
    if stale is not None:
        return stale
    match command:
        case Succeed():
            return Transition(
                replace(
                    state,
                    status=SUCCEEDED,
                    progress=100,
                    status_message=command.status_message or "succeeded",
                    error_code=job_pb2.ERROR_CODE_UNSPECIFIED,
                    error_message="",
                    result_digest=command.result_digest,
                )
            )
        case FailRetryable() if state.attempt < command.max_attempts:
            return Transition(
                replace(
                    state,
                    status=QUEUED,
                    progress=0,
                    status_message=f"retrying after attempt {state.attempt}: {command.message}",
                    error_code=command.code,
                    error_message=command.message,
                )
            )
        case FailRetryable():
            return _exhaust(state, command.message, command.result_digest)
        case FailFinal():
            return Transition(
                replace(
                    state,
                    status=FAILED,
                    status_message="failed",
                    error_code=command.code,
                    error_message=command.message,
                    result_digest=command.result_digest,
                )
            )


def _exhaust(state: JobState, cause: str, result_digest: bytes | None) -> Transition:
    return Transition(
        replace(
            state,
            status=FAILED,
            status_message="attempts exhausted",
            error_code=job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED,
            error_message=f"attempts exhausted after {state.attempt}: {cause}",
            result_digest=result_digest,
        )
    )


def _check_attempt(state: JobState, attempt: int) -> Refusal | None:
    if state.status in FINISHED:
        return _finished(state)
    if attempt != state.attempt or state.status != RUNNING:
        return Refusal(
            Reason.ATTEMPT_STALE,
            f"attempt {attempt} is stale (current attempt {state.attempt}, "
            f"status {status_name(state.status)})",
            state.status,
        )
    return None


def _finished(state: JobState, more: str = "") -> Refusal:
    return Refusal(
        Reason.JOB_FINISHED, f"the job is {status_name(state.status)}{more}", state.status
    )
