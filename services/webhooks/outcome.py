"""What an attempt's result does to its delivery and its endpoint. Pure: no I/O, no clock.

A 2xx ends the delivery (SUCCEEDED). 410 Gone fails it and disables the endpoint at once. Anything
else (another status, a redirect, a timeout, a connection error, a refused address) schedules the
next attempt after the schedule's next wait until the schedule is exhausted (FAILED); an endpoint
failing without a success for `disable_after_seconds` is disabled and the delivery failed. A manual
attempt (RedeliverWebhook) does not count against the schedule; when it fails, the delivery ends
FAILED unless it was still in its schedule, which then goes on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from media.v1 import webhook_service_pb2

PENDING = webhook_service_pb2.DELIVERY_STATE_PENDING
SUCCEEDED = webhook_service_pb2.DELIVERY_STATE_SUCCEEDED
FAILED = webhook_service_pb2.DELIVERY_STATE_FAILED

GONE_REASON = "the endpoint answered 410 Gone"
# The error of a delivery that came due after its endpoint was disabled (no request is made).
ENDPOINT_DISABLED = "endpoint disabled"


class Outcome(enum.StrEnum):
    """The metric label of an attempt."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"


class DisableReason(enum.StrEnum):
    """The metric label of a disabling."""

    GONE = "gone"
    FAILING = "failing"


@dataclass(frozen=True)
class Result:
    """What one attempt met."""

    status_code: int = 0  # 0: no HTTP answer (see error)
    error: str = ""
    # False when the sender itself failed (reading the job): the endpoint is not blamed for it.
    receiver_fault: bool = True

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass(frozen=True)
class Schedule:
    delays: tuple[float, ...]  # the wait after each failed scheduled attempt
    jitter: float = 0.0  # each wait is spread by +- this fraction

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay(self, failed_attempts: int, spread: float) -> float:
        """The wait after the `failed_attempts`-th failure (from 1); `spread` in [-1, 1]
        picks where within the jitter it lands."""
        base = self.delays[max(1, failed_attempts) - 1]
        return base * (1 + self.jitter * max(-1.0, min(1.0, spread)))


@dataclass(frozen=True)
class Decision:
    state: int  # DeliveryState
    outcome: Outcome
    attempts: int  # scheduled attempts made, this one included when it was scheduled
    retry_in_seconds: float | None = None  # set when state is PENDING
    disable: DisableReason | None = None
    disabled_reason: str = ""  # the endpoint's disabled_reason when `disable`


def still_scheduled(
    attempts: int, last_status: int | None, last_error: str, schedule: Schedule
) -> bool:
    """Whether a delivery sent again by hand was still in its retry schedule: attempts left, and
    its latest attempt (if any) a failure that was to be retried."""
    if attempts >= schedule.max_attempts:
        return False
    if last_status is None:
        return True  # never attempted yet
    ended = 200 <= last_status < 300 or last_status == 410 or last_error == ENDPOINT_DISABLED
    return not ended


def failing_reason(failing_since: datetime) -> str:
    return f"failing since {failing_since.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def decide(
    result: Result,
    *,
    attempts: int,
    manual: bool,
    in_schedule: bool,
    endpoint_enabled: bool,
    failing_since: datetime | None,
    now: datetime,
    schedule: Schedule,
    disable_after_seconds: float,
    spread: float,
) -> Decision:
    """`attempts`: scheduled attempts made before this one. `failing_since`: the endpoint's first
    failure since its last success, this attempt counted (None after a success). `spread`: a
    random number in [-1, 1] for the jitter."""
    made = attempts if manual else attempts + 1
    if not endpoint_enabled:
        return Decision(FAILED, Outcome.FAILED, attempts)
    if result.ok:
        return Decision(SUCCEEDED, Outcome.SUCCEEDED, made)
    if result.status_code == 410:
        return Decision(FAILED, Outcome.FAILED, made, None, DisableReason.GONE, GONE_REASON)
    if (
        result.receiver_fault
        and failing_since is not None
        and (now - failing_since).total_seconds() >= disable_after_seconds
    ):
        reason = failing_reason(failing_since)
        return Decision(FAILED, Outcome.FAILED, made, None, DisableReason.FAILING, reason)
    if manual and not in_schedule:
        return Decision(FAILED, Outcome.FAILED, made)
    if made >= schedule.max_attempts:
        return Decision(FAILED, Outcome.FAILED, made)
    return Decision(PENDING, Outcome.RETRYING, made, schedule.delay(made, spread))
