"""The job lifecycle as a table: every pair of state and command and what it does. No processes.

Each row of EXPECTED names a state and a command and what must happen: the next status (with the
attempt and error code where they matter), `same` (a repeat: nothing written) or a refusal reason.
A pair missing from the table fails `test_the_table_covers_every_pair`.
"""

from __future__ import annotations

import pytest

from media.v1 import job_pb2
from services.common import lifecycle
from services.common.lifecycle import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Cancel,
    Claim,
    Command,
    Create,
    Emit,
    ExhaustAttempts,
    FailFinal,
    FailRetryable,
    JobState,
    Progress,
    Reason,
    Refusal,
    Succeed,
    Transition,
    Unchanged,
)

MAX = 3
DIGEST = b"result"
OTHER = b"other result"
RETRY = job_pb2.ERROR_CODE_UPSTREAM_UNAVAILABLE
FINAL = job_pb2.ERROR_CODE_SAFETY_BLOCKED
EXHAUSTED = job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED

STATES: dict[str, JobState | None] = {
    "none": None,
    "queued": JobState(QUEUED, status_message="queued"),
    "queued-retry": JobState(QUEUED, attempt=1, error_code=RETRY, error_message="503"),
    "queued-last": JobState(QUEUED, attempt=MAX, error_code=RETRY, error_message="503"),
    "running": JobState(RUNNING, attempt=1, progress=40, status_message="drawing"),
    "running-last": JobState(RUNNING, attempt=MAX, progress=10, status_message="drawing"),
    "succeeded": JobState(SUCCEEDED, attempt=1, progress=100, result_digest=DIGEST),
    "failed": JobState(FAILED, attempt=1, error_code=FINAL, result_digest=DIGEST),
    "canceled": JobState(CANCELED, attempt=1),
}

COMMANDS: dict[str, Command] = {
    "create": Create(),
    "claim": Claim(MAX),
    "progress": Progress(1, 60, "sharpening"),
    "progress-same": Progress(1, 40, "drawing"),
    "progress-stale": Progress(2, 60, "sharpening"),
    "succeed": Succeed(1, DIGEST, "done"),
    "succeed-other": Succeed(1, OTHER),
    "fail-retryable": FailRetryable(1, RETRY, "503", DIGEST, MAX),
    "fail-retryable-last": FailRetryable(MAX, RETRY, "503", DIGEST, MAX),
    "fail-final": FailFinal(1, FINAL, "blocked", DIGEST),
    "exhaust": ExhaustAttempts("worker died"),
    "cancel": Cancel(),
}

# Outcomes: a status name (a transition to it), "same", or a Reason.
FINISHED_ROWS = {
    "create": Reason.JOB_EXISTS,
    "claim": Reason.JOB_FINISHED,
    "progress": Reason.JOB_FINISHED,
    "progress-same": Reason.JOB_FINISHED,
    "progress-stale": Reason.JOB_FINISHED,
    "succeed-other": Reason.JOB_FINISHED,
    "fail-retryable-last": Reason.JOB_FINISHED,  # canceled: it has no result to repeat
    "exhaust": Reason.JOB_FINISHED,
}
EXPECTED: dict[str, dict[str, object]] = {
    "none": {"create": QUEUED, **{c: Reason.JOB_NOT_FOUND for c in COMMANDS if c != "create"}},
    "queued": {
        "create": Reason.JOB_EXISTS,
        "claim": RUNNING,
        "progress": Reason.ATTEMPT_STALE,
        "progress-same": Reason.ATTEMPT_STALE,
        "progress-stale": Reason.ATTEMPT_STALE,
        "succeed": Reason.ATTEMPT_STALE,
        "succeed-other": Reason.ATTEMPT_STALE,
        "fail-retryable": Reason.ATTEMPT_STALE,
        "fail-retryable-last": Reason.ATTEMPT_STALE,
        "fail-final": Reason.ATTEMPT_STALE,
        "exhaust": FAILED,
        "cancel": CANCELED,
    },
    # Back in the queue after attempt 1: its result arriving again is stale, a claim starts 2.
    "queued-retry": {
        "create": Reason.JOB_EXISTS,
        "claim": RUNNING,
        "progress": Reason.ATTEMPT_STALE,
        "progress-same": Reason.ATTEMPT_STALE,
        "progress-stale": Reason.ATTEMPT_STALE,
        "succeed": Reason.ATTEMPT_STALE,
        "succeed-other": Reason.ATTEMPT_STALE,
        "fail-retryable": Reason.ATTEMPT_STALE,
        "fail-retryable-last": Reason.ATTEMPT_STALE,
        "fail-final": Reason.ATTEMPT_STALE,
        "exhaust": FAILED,
        "cancel": CANCELED,
    },
    # Every attempt used: a claim fails the job (and is refused after that is committed).
    "queued-last": {
        "create": Reason.JOB_EXISTS,
        "claim": FAILED,
        "progress": Reason.ATTEMPT_STALE,
        "progress-same": Reason.ATTEMPT_STALE,
        "progress-stale": Reason.ATTEMPT_STALE,
        "succeed": Reason.ATTEMPT_STALE,
        "succeed-other": Reason.ATTEMPT_STALE,
        "fail-retryable": Reason.ATTEMPT_STALE,
        "fail-retryable-last": Reason.ATTEMPT_STALE,
        "fail-final": Reason.ATTEMPT_STALE,
        "exhaust": FAILED,
        "cancel": CANCELED,
    },
    "running": {
        "create": Reason.JOB_EXISTS,
        "claim": RUNNING,  # redelivered after its worker died: attempt 2
        "progress": RUNNING,
        "progress-same": "same",
        "progress-stale": Reason.ATTEMPT_STALE,
        "succeed": SUCCEEDED,
        "succeed-other": SUCCEEDED,
        "fail-retryable": QUEUED,
        "fail-retryable-last": Reason.ATTEMPT_STALE,  # attempt 3 while 1 runs
        "fail-final": FAILED,
        "exhaust": FAILED,
        "cancel": CANCELED,
    },
    "running-last": {
        "create": Reason.JOB_EXISTS,
        "claim": FAILED,
        "progress": Reason.ATTEMPT_STALE,
        "progress-same": Reason.ATTEMPT_STALE,
        "progress-stale": Reason.ATTEMPT_STALE,
        "succeed": Reason.ATTEMPT_STALE,
        "succeed-other": Reason.ATTEMPT_STALE,
        "fail-retryable": Reason.ATTEMPT_STALE,
        "fail-retryable-last": FAILED,
        "fail-final": Reason.ATTEMPT_STALE,
        "exhaust": FAILED,
        "cancel": CANCELED,
    },
    # A finished job: the same result again is a repeat; anything else is refused.
    "succeeded": {
        **FINISHED_ROWS,
        "succeed": "same",
        # (the table's results share one digest: the same result again)
        "fail-retryable": "same",
        "fail-retryable-last": "same",
        "fail-final": "same",
        "cancel": Reason.JOB_FINISHED,
    },
    "failed": {
        **FINISHED_ROWS,
        "succeed": "same",
        "fail-retryable": "same",
        "fail-retryable-last": "same",
        "fail-final": "same",
        "cancel": Reason.JOB_FINISHED,
    },
    "canceled": {
        **FINISHED_ROWS,
        "succeed": Reason.JOB_FINISHED,
        "fail-retryable": Reason.JOB_FINISHED,
        "fail-final": Reason.JOB_FINISHED,
        "cancel": "same",
    },
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(STATES)
    for state, row in EXPECTED.items():
        assert set(row) == set(COMMANDS), state


PAIRS = [(s, c) for s in STATES for c in COMMANDS]


@pytest.mark.parametrize(("state_name", "command_name"), PAIRS)
def test_every_state_and_command(state_name: str, command_name: str) -> None:
    state, command = STATES[state_name], COMMANDS[command_name]
    expected = EXPECTED[state_name][command_name]
    decision = lifecycle.decide(state, command)
    if isinstance(expected, Reason):
        assert isinstance(decision, Refusal), decision
        assert decision.reason is expected
        assert decision.status == (None if state is None else state.status)
    elif expected == "same":
        assert isinstance(decision, Unchanged), decision
    else:
        assert isinstance(decision, Transition), decision
        assert decision.state.status == expected
        # Every change is published; only a new job is also dispatched.
        emits = (Emit.DISPATCH, Emit.STATUS) if command_name == "create" else (Emit.STATUS,)
        assert decision.emit == emits
        assert decision.finished == (expected in lifecycle.FINISHED)


def test_a_claim_starts_the_next_attempt_from_zero_progress() -> None:
    for name in ("queued", "queued-retry", "running"):
        state = STATES[name]
        assert state is not None
        decision = lifecycle.decide(state, Claim(MAX))
        assert isinstance(decision, Transition)
        assert decision.state.attempt == state.attempt + 1
        assert decision.state.progress == 0
        assert decision.state.status_message == f"started (attempt {state.attempt + 1})"
        assert decision.then_refuse is None


def test_a_claim_with_no_attempt_left_fails_the_job_then_is_refused() -> None:
    decision = lifecycle.decide(STATES["queued-last"], Claim(MAX))
    assert isinstance(decision, Transition)
    assert decision.state.error_code == EXHAUSTED
    assert decision.state.error_message == f"attempts exhausted after {MAX}: 503"
    assert decision.then_refuse is not None
    assert decision.then_refuse.reason is Reason.JOB_FINISHED
    assert decision.then_refuse.status == FAILED
    # A worker that died without reporting leaves no error of its own: the cause says so.
    silent = lifecycle.decide(JobState(RUNNING, attempt=MAX), Claim(MAX))
    assert isinstance(silent, Transition)
    assert silent.state.error_message.endswith("the worker stopped without reporting")


def test_a_retryable_failure_requeues_until_the_last_attempt() -> None:
    retry = lifecycle.decide(STATES["running"], COMMANDS["fail-retryable"])
    assert isinstance(retry, Transition)
    assert (retry.state.status, retry.state.error_code) == (QUEUED, RETRY)
    assert retry.state.status_message == "retrying after attempt 1: 503"
    assert retry.state.result_digest is None  # not finished: a repeat is stale, not a replay
    last = lifecycle.decide(STATES["running-last"], COMMANDS["fail-retryable-last"])
    assert isinstance(last, Transition)
    assert (last.state.status, last.state.error_code) == (FAILED, EXHAUSTED)
    assert last.state.error_message == f"attempts exhausted after {MAX}: 503"
    assert last.state.result_digest == DIGEST


def test_success_and_final_failure_record_their_result() -> None:
    done = lifecycle.decide(STATES["running"], COMMANDS["succeed"])
    assert isinstance(done, Transition)
    assert (done.state.progress, done.state.status_message) == (100, "done")
    assert done.state.result_digest == DIGEST
    bare = lifecycle.decide(STATES["running"], Succeed(1, DIGEST))
    assert isinstance(bare, Transition) and bare.state.status_message == "succeeded"
    failed = lifecycle.decide(STATES["running"], COMMANDS["fail-final"])
    assert isinstance(failed, Transition)
    assert (failed.state.error_code, failed.state.error_message) == (FINAL, "blocked")


def test_a_different_result_for_a_finished_job_is_refused_with_its_status() -> None:
    refusal = lifecycle.decide(STATES["succeeded"], COMMANDS["succeed-other"])
    assert isinstance(refusal, Refusal)
    assert refusal.status == SUCCEEDED
    assert "a different result cannot be recorded" in refusal.message


def test_progress_changes_only_progress_and_message() -> None:
    decision = lifecycle.decide(STATES["running"], COMMANDS["progress"])
    assert isinstance(decision, Transition)
    assert decision.state == JobState(RUNNING, attempt=1, progress=60, status_message="sharpening")


def test_vocabulary() -> None:
    assert lifecycle.FINISHED == {SUCCEEDED, FAILED, CANCELED}
    assert lifecycle.ACTIVE == {QUEUED, RUNNING}
    assert lifecycle.FINISHED.isdisjoint(lifecycle.ACTIVE)
    assert set(lifecycle.STATUSES) == lifecycle.FINISHED | lifecycle.ACTIVE
    assert [lifecycle.status_name(s) for s in lifecycle.STATUSES] == [
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELED",
    ]
    for status in lifecycle.STATUSES:
        assert lifecycle.status_from_name(lifecycle.status_name(status)) == status
    assert lifecycle.status_from_name("DONE") is None
    assert lifecycle.KINDS == ("image", "video")
    assert lifecycle.KINDS_BY_NAME["video"] == job_pb2.MEDIA_KIND_VIDEO
