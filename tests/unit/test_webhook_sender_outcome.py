"""What an attempt's result does to its delivery and endpoint (services.webhooks.outcome)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.webhooks.outcome import (
    ENDPOINT_DISABLED,
    FAILED,
    GONE_REASON,
    PENDING,
    SUCCEEDED,
    DisableReason,
    Outcome,
    Result,
    Schedule,
    decide,
    still_scheduled,
)

SCHEDULE = Schedule((5.0, 300.0, 1800.0), jitter=0.1)  # 4 attempts in all
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DISABLE_AFTER = 5 * 86400.0


def run(result: Result, **overrides: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {
        "attempts": 0,
        "manual": False,
        "in_schedule": True,
        "endpoint_enabled": True,
        "failing_since": None if result.ok else NOW,
        "now": NOW,
        "schedule": SCHEDULE,
        "disable_after_seconds": DISABLE_AFTER,
        "spread": 0.0,
    }
    return decide(result, **{**args, **overrides})


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_a_2xx_ends_the_delivery(status: int) -> None:
    decision = run(Result(status), attempts=2)
    assert (decision.state, decision.outcome, decision.attempts) == (
        SUCCEEDED,
        Outcome.SUCCEEDED,
        3,
    )
    assert decision.retry_in_seconds is None and decision.disable is None


@pytest.mark.parametrize(
    "result",
    [Result(500), Result(404), Result(301), Result(302), Result(199), Result(error="timed out")],
    ids=["500", "404", "301", "302", "199", "timeout"],
)
def test_anything_else_is_retried_on_the_schedule(result: Result) -> None:
    for attempts, wait in ((0, 5.0), (1, 300.0), (2, 1800.0)):
        decision = run(result, attempts=attempts)
        assert decision.state == PENDING
        assert decision.outcome is Outcome.RETRYING
        assert decision.attempts == attempts + 1
        assert decision.retry_in_seconds == wait


def test_the_last_failure_of_the_schedule_fails_the_delivery() -> None:
    decision = run(Result(500), attempts=3)
    assert (decision.state, decision.outcome, decision.attempts) == (FAILED, Outcome.FAILED, 4)
    assert decision.disable is None


def test_jitter_spreads_each_wait_within_its_fraction() -> None:
    assert SCHEDULE.delay(2, -1.0) == pytest.approx(270.0)
    assert SCHEDULE.delay(2, 1.0) == pytest.approx(330.0)
    assert SCHEDULE.delay(2, 5.0) == pytest.approx(330.0)  # clamped
    assert run(Result(500), attempts=1, spread=0.5).retry_in_seconds == pytest.approx(315.0)


def test_410_fails_the_delivery_and_disables_the_endpoint_at_once() -> None:
    decision = run(Result(410))
    assert (decision.state, decision.outcome) == (FAILED, Outcome.FAILED)
    assert (decision.disable, decision.disabled_reason) == (DisableReason.GONE, GONE_REASON)


def test_failing_too_long_disables_the_endpoint() -> None:
    since = NOW - timedelta(seconds=DISABLE_AFTER)
    decision = run(Result(500), failing_since=since)
    assert (decision.state, decision.disable) == (FAILED, DisableReason.FAILING)
    assert decision.disabled_reason == "failing since 2025-12-28T03:04:05Z"
    assert run(Result(500), failing_since=since + timedelta(seconds=1)).state == PENDING


def test_a_failure_of_the_sender_does_not_disable_the_endpoint() -> None:
    long_ago = NOW - timedelta(days=30)
    result = Result(error="could not read the job", receiver_fault=False)
    decision = run(result, failing_since=long_ago)
    assert (decision.state, decision.disable) == (PENDING, None)


def test_a_disabled_endpoints_delivery_fails_without_counting() -> None:
    decision = run(Result(error=ENDPOINT_DISABLED, receiver_fault=False), endpoint_enabled=False)
    assert (decision.state, decision.outcome, decision.attempts) == (FAILED, Outcome.FAILED, 0)


def test_a_manual_attempt_does_not_count_against_the_schedule() -> None:
    ok = run(Result(200), attempts=4, manual=True, in_schedule=False)
    assert (ok.state, ok.attempts) == (SUCCEEDED, 4)
    failed = run(Result(500), attempts=4, manual=True, in_schedule=False)
    assert (failed.state, failed.attempts, failed.retry_in_seconds) == (FAILED, 4, None)
    # Still in its schedule: the schedule goes on where it was.
    pending = run(Result(500), attempts=1, manual=True, in_schedule=True)
    assert (pending.state, pending.attempts, pending.retry_in_seconds) == (PENDING, 1, 5.0)


@pytest.mark.parametrize(
    ("attempts", "last_status", "last_error", "expected"),
    [
        (0, None, "", True),  # never attempted
        (1, 500, "", True),  # waiting for its next retry
        (2, 0, "timed out after 15 s", True),
        (4, 500, "", False),  # the schedule is exhausted
        (1, 200, "", False),  # it had succeeded
        (1, 410, "", False),  # gone
        (1, 0, ENDPOINT_DISABLED, False),
    ],
)
def test_whether_a_redelivered_delivery_was_still_in_its_schedule(
    attempts: int, last_status: int | None, last_error: str, expected: bool
) -> None:
    assert still_scheduled(attempts, last_status, last_error, SCHEDULE) is expected
