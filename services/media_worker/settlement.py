"""How a dispatch message ends: decided once per delivery, carried out in one place.

Every way through a delivery ends in one `Settlement`: what to tell JetStream (ack, redeliver
after a delay, terminate, or leave the message alone) and which of the job's stored outputs no
record will ever point to, deleted first. The `after_*` functions decide from what happened and
what job_service answered, and do nothing else; `carry_out` does what they decided.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from nats.aio.msg import Msg

from services.common import lifecycle
from services.common.errors import refusal_of
from services.media_worker.cancellation import Stop, refusal_stop
from services.media_worker.uploader import Storage

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_SECONDS = 5.0
# A job that ended in one of these records no outputs: whatever any attempt stored is nobody's.
_ENDED_WITHOUT_OUTPUTS = lifecycle.FINISHED - {lifecycle.SUCCEEDED}
# What WorkerService answers a call that no longer applies (canceled, finished, superseded).
_REFUSED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})


class Action(enum.Enum):
    ACK = "ack"  # done with: JetStream forgets the message
    REDELIVER = "redeliver"  # nak: delivered again after `delay`, for another attempt
    TERMINATE = "terminate"  # no delivery can ever succeed
    LEAVE = "leave"  # a newer attempt holds a newer delivery of it (see `after_stop`)


@dataclass(frozen=True)
class Attempts:
    """Attempts `first` to `last` of a job (`last` None: every one from `first` on)."""

    first: int = 1
    last: int | None = None

    def __contains__(self, attempt: object) -> bool:
        if not isinstance(attempt, int):
            return False
        return attempt >= self.first and (self.last is None or attempt <= self.last)

    @classmethod
    def only(cls, attempt: int) -> Attempts:
        return cls(attempt, attempt)

    @classmethod
    def before(cls, attempt: int) -> Attempts | None:
        return cls(1, attempt - 1) if attempt > 1 else None


ALL_ATTEMPTS = Attempts()


@dataclass(frozen=True)
class Settlement:
    action: Action
    why: str  # what happened, for the log line that reports the settlement
    delay: float = 0.0  # REDELIVER: seconds until JetStream delivers it again
    discard: Attempts | None = None  # whose stored outputs to delete before settling


# --- the decisions ------------------------------------------------------------------------------


def undecodable(subject: str) -> Settlement:
    # Redelivering bytes that do not parse would loop forever.
    return Settlement(Action.TERMINATE, f"undecodable dispatch message on {subject}")


def handed_back() -> Settlement:
    """The worker is stopping: another worker should have the job at once."""
    return Settlement(Action.REDELIVER, "worker stopping, returning job to the queue")


def unexpected(delay: float) -> Settlement:
    """A bug in the worker: the message comes back later instead of being lost."""
    return Settlement(Action.REDELIVER, "unexpected error", delay)


def after_claim_error(error: grpc.aio.AioRpcError, delay: float) -> Settlement:
    code, details = error.code(), error.details() or error.code().name
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        refusal = refusal_of(error)
        discard = None
        if (
            refusal is not None
            and refusal.reason == lifecycle.Reason.JOB_FINISHED
            and refusal.status in _ENDED_WITHOUT_OUTPUTS
        ):
            # Canceled, or failed with its attempts exhausted, while an attempt that had
            # uploaded was dead: no record will point to anything it stored.
            discard = ALL_ATTEMPTS
        return Settlement(Action.ACK, f"job not runnable ({details})", discard=discard)
    if code == grpc.StatusCode.NOT_FOUND:
        return Settlement(Action.ACK, "job unknown to job_service")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # e.g. a job ID that is not one: no redelivery can fix the message.
        return Settlement(Action.TERMINATE, f"claim rejected ({details})")
    # job_service unreachable, or overloaded: the claim can be tried again later.
    return Settlement(Action.REDELIVER, f"claim failed ({code.name}: {details})", delay)


def after_stop(
    stop: Stop, attempt: int, *, left_objects: bool, what: str = "job canceled or superseded"
) -> Settlement:
    """Ends an attempt that was told to stop, or whose result was refused, without a result.
    left_objects: it may have stored outputs, which nothing will record now."""
    discard = Attempts.only(attempt) if left_objects else None
    why = f"{what} ({stop.reason})"
    if stop.job_over:
        return Settlement(Action.ACK, why, discard=discard)
    # A newer attempt holds a newer delivery of this very message. JetStream settles a message
    # by stream sequence whatever delivery an ack comes from, so acking here would take it from
    # under that attempt: if its worker then died, nothing would redeliver it.
    return Settlement(Action.LEAVE, why, discard=discard)


def after_complete(
    status: lifecycle.Status, attempt: int, *, upload_failed: bool, delay: float
) -> Settlement:
    """CompleteJob recorded the attempt's result and the job is now `status`."""
    # A failed upload's leftovers: a failure records no outputs.
    discard = Attempts.only(attempt) if upload_failed else None
    if status == lifecycle.QUEUED:  # a retryable failure with attempts left
        return Settlement(Action.REDELIVER, "job will be retried", delay, discard)
    return Settlement(
        Action.ACK, f"job completed ({lifecycle.status_name(status)})", discard=discard
    )


def after_complete_error(
    error: grpc.aio.AioRpcError, attempt: int, *, left_objects: bool, delay: float
) -> Settlement:
    if error.code() in _REFUSED:
        # Canceled meanwhile, or a newer attempt owns the job: nothing records this attempt's
        # outputs. Any other error may hide a commit whose answer was lost, so only a refusal
        # makes them safe to delete.
        stop = refusal_stop(error)
        return after_stop(stop, attempt, left_objects=left_objects, what="CompleteJob refused")
    details = error.details() or ""
    return Settlement(
        Action.REDELIVER, f"CompleteJob failed ({error.code().name}: {details})", delay
    )


# --- carrying one out ---------------------------------------------------------------------------


async def carry_out(settlement: Settlement, msg: Msg, storage: Storage, job_id: str) -> None:
    """Deletes what the settlement says, then settles the message. Never raises (but
    CancelledError): a message left unsettled is redelivered after ack_wait, and claiming it
    again is safe."""
    if settlement.discard is not None:
        await storage.discard_outputs(job_id, settlement.discard, settlement.why)
    why = settlement.why
    match settlement.action:
        case Action.ACK:
            log.info("%s; acking", why)
            await _settle("ack", msg.ack)
        case Action.REDELIVER if settlement.delay > 0:
            log.warning("%s; redelivering in %.1f s", why, settlement.delay)
            await _settle("nak", lambda: msg.nak(settlement.delay))
        case Action.REDELIVER:
            log.warning("%s; redelivering at once", why)
            await _settle("nak", msg.nak)
        case Action.TERMINATE:
            log.error("%s; terminating the message", why)
            await _settle("terminate", msg.term)
        case Action.LEAVE:
            log.info("%s; leaving the message to the newer attempt", why)


async def _settle(what: str, action: Callable[[], Awaitable[None]]) -> None:
    try:
        await asyncio.wait_for(action(), SETTLE_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("could not %s the message: %s", what, exc)
