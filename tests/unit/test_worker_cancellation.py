"""When a running attempt is told to stop by its job's status events (cancellation.py)."""

from __future__ import annotations

import pytest

from media.v1 import events_pb2, job_pb2
from services.common.errors import RpcError, failed_precondition, not_found
from services.common.lifecycle import Reason
from services.media_worker.cancellation import (
    CancellationListener,
    JobWatch,
    Stop,
    refusal_stop,
    stop_reason,
)
from tests.unit.test_worker_settlement import aio_error

JOB_ID = "01a209ac-9f4e-7224-8e25-1337f2bc5bcc"
S = job_pb2


def job(status: int, attempt: int, version: int = 1, job_id: str = JOB_ID) -> job_pb2.Job:
    return job_pb2.Job(id=job_id, status=status, attempt=attempt, version=version)


@pytest.mark.parametrize(
    ("status", "attempt", "stops", "over"),
    [
        (S.JOB_STATUS_RUNNING, 2, None, None),  # our own claim and progress
        (S.JOB_STATUS_RUNNING, 1, None, None),  # a late event of the attempt before ours
        (S.JOB_STATUS_QUEUED, 1, None, None),
        (S.JOB_STATUS_CANCELED, 2, "canceled", True),
        (S.JOB_STATUS_CANCELED, 0, "canceled", True),
        (S.JOB_STATUS_RUNNING, 3, "superseded", False),  # another worker took the job over
        (S.JOB_STATUS_SUCCEEDED, 3, "superseded", False),
        (S.JOB_STATUS_SUCCEEDED, 2, None, None),  # our own result (the watch is disarmed then)
        (S.JOB_STATUS_FAILED, 1, "already FAILED", True),
        (S.JOB_STATUS_SUCCEEDED, 1, "already SUCCEEDED", True),
    ],
)
def test_stop_reason_for_attempt_2(
    status: int, attempt: int, stops: str | None, over: bool | None
) -> None:
    stop = stop_reason(job(status, attempt), 2)
    if stops is None:
        assert stop is None
    else:
        assert stop is not None and stops in stop.reason and stop.job_over is over


class _Msg:
    def __init__(self, job: job_pb2.Job) -> None:
        self.data = events_pb2.JobEvent(job=job).SerializeToString()


async def test_an_event_before_the_claim_is_acted_on_when_armed() -> None:
    watch = JobWatch(JOB_ID)
    await watch._on_message(_Msg(job(S.JOB_STATUS_CANCELED, 1, version=3)))  # type: ignore[arg-type]
    stopped: list[Stop] = []
    watch.arm(1, stopped.append)
    assert len(stopped) == 1 and "canceled" in stopped[0].reason


async def test_stops_once_and_never_after_disarm() -> None:
    watch = JobWatch(JOB_ID)
    stopped: list[Stop] = []
    watch.arm(1, stopped.append)
    await watch._on_message(_Msg(job(S.JOB_STATUS_RUNNING, 1, version=2)))  # type: ignore[arg-type]
    assert stopped == []
    await watch._on_message(_Msg(job(S.JOB_STATUS_RUNNING, 2, version=5)))  # type: ignore[arg-type]
    await watch._on_message(_Msg(job(S.JOB_STATUS_CANCELED, 2, version=6)))  # type: ignore[arg-type]
    assert len(stopped) == 1 and "superseded" in stopped[0].reason

    other = JobWatch(JOB_ID)
    other.arm(1, stopped.append)
    other.disarm()
    await other._on_message(_Msg(job(S.JOB_STATUS_CANCELED, 1, version=9)))  # type: ignore[arg-type]
    assert len(stopped) == 1


async def test_events_of_another_job_or_garbage_are_ignored() -> None:
    watch = JobWatch(JOB_ID)
    stopped: list[Stop] = []
    watch.arm(1, stopped.append)
    other = job(S.JOB_STATUS_CANCELED, 1, job_id="01a209ac-9f4e-7224-8e25-000000000000")
    await watch._on_message(_Msg(other))  # type: ignore[arg-type]

    class Garbage:
        data = b"\xff\xff\xff"

    await watch._on_message(Garbage())  # type: ignore[arg-type]
    assert stopped == []


async def test_without_nats_the_watch_is_silent() -> None:
    watch = await CancellationListener(None).watch(JOB_ID)
    stopped: list[Stop] = []
    watch.arm(1, stopped.append)
    assert stopped == []
    await watch.close()


@pytest.mark.parametrize(
    ("error", "over"),
    [
        (failed_precondition("job 01a2 is CANCELED", Reason.JOB_FINISHED, "CANCELED"), True),
        (failed_precondition("job 01a2 is SUCCEEDED", Reason.JOB_FINISHED, "SUCCEEDED"), True),
        (failed_precondition("attempt 1 is stale", Reason.ATTEMPT_STALE, "RUNNING"), False),
        (failed_precondition("attempt 1 is stale", Reason.ATTEMPT_STALE, "QUEUED"), False),
        (not_found("job 01a2"), True),
        # A refusal without a reason cannot say that a newer attempt holds the job.
        (failed_precondition("job 01a2 is gone"), True),
    ],
)
def test_only_a_stale_attempt_leaves_the_job_to_another(error: RpcError, over: bool) -> None:
    stop = refusal_stop(aio_error(error))
    assert stop == Stop(error.message, job_over=over)
