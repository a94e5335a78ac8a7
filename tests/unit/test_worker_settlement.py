"""How the worker ends a delivery (settlement.py): what happened and what job_service answered ->
what JetStream is told and whose stored outputs go first. No processes: the errors are built the
way job_service's handlers build them."""

from __future__ import annotations

import grpc
import pytest

from services.common import lifecycle
from services.common.errors import RpcError, failed_precondition, invalid_argument, not_found
from services.common.lifecycle import Reason
from services.media_worker.cancellation import Stop
from services.media_worker.settlement import (
    ALL_ATTEMPTS,
    Action,
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

DELAY = 1.5


def aio_error(error: RpcError) -> grpc.aio.AioRpcError:
    """The error a worker's stub raises for what job_service's handler raised."""
    status = error.to_status()
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def refused(reason: Reason, status: str) -> grpc.aio.AioRpcError:
    return aio_error(failed_precondition(f"job 01a2 is {status}", reason, status))


def plain(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return aio_error(RpcError(code, "job_service said no"))


# --- the claim ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action", "delay", "discard"),
    [
        # Finished: dropped. Finished without outputs: a dead attempt's uploads go too.
        (refused(Reason.JOB_FINISHED, "SUCCEEDED"), Action.ACK, 0.0, None),
        (refused(Reason.JOB_FINISHED, "CANCELED"), Action.ACK, 0.0, ALL_ATTEMPTS),
        (refused(Reason.JOB_FINISHED, "FAILED"), Action.ACK, 0.0, ALL_ATTEMPTS),
        # Without a status to go by, nothing is deleted: it might be a succeeded job's.
        (aio_error(failed_precondition("finished", Reason.JOB_FINISHED)), Action.ACK, 0.0, None),
        (plain(grpc.StatusCode.FAILED_PRECONDITION), Action.ACK, 0.0, None),
        (aio_error(not_found("job 01a2")), Action.ACK, 0.0, None),
        (aio_error(invalid_argument([("job_id", "not a UUID")])), Action.TERMINATE, 0.0, None),
        (plain(grpc.StatusCode.UNAVAILABLE), Action.REDELIVER, DELAY, None),
        (plain(grpc.StatusCode.DEADLINE_EXCEEDED), Action.REDELIVER, DELAY, None),
        (plain(grpc.StatusCode.INTERNAL), Action.REDELIVER, DELAY, None),
    ],
)
def test_a_refused_claim(
    error: grpc.aio.AioRpcError, action: Action, delay: float, discard: Attempts | None
) -> None:
    settlement = after_claim_error(error, DELAY)
    assert (settlement.action, settlement.delay, settlement.discard) == (action, delay, discard)


# --- a stop (status event, or a refused progress report) ----------------------------------------


@pytest.mark.parametrize(
    ("job_over", "left_objects", "action", "discard"),
    [
        (True, False, Action.ACK, None),
        (True, True, Action.ACK, Attempts(3, 3)),
        # Superseded: the newer attempt holds a newer delivery of the message; never ack it.
        (False, False, Action.LEAVE, None),
        (False, True, Action.LEAVE, Attempts(3, 3)),
    ],
)
def test_a_stopped_attempt(
    job_over: bool, left_objects: bool, action: Action, discard: Attempts | None
) -> None:
    settlement = after_stop(Stop("canceled", job_over), 3, left_objects=left_objects)
    assert settlement == Settlement(
        action, "job canceled or superseded (canceled)", discard=discard
    )


# --- CompleteJob --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "upload_failed", "action", "delay", "discard"),
    [
        (lifecycle.SUCCEEDED, False, Action.ACK, 0.0, None),
        (lifecycle.FAILED, False, Action.ACK, 0.0, None),
        (lifecycle.FAILED, True, Action.ACK, 0.0, Attempts(2, 2)),
        # A retryable failure with attempts left: the next delivery is the next attempt.
        (lifecycle.QUEUED, False, Action.REDELIVER, DELAY, None),
        (lifecycle.QUEUED, True, Action.REDELIVER, DELAY, Attempts(2, 2)),
    ],
)
def test_a_recorded_result(
    status: lifecycle.Status,
    upload_failed: bool,
    action: Action,
    delay: float,
    discard: Attempts | None,
) -> None:
    settlement = after_complete(status, 2, upload_failed=upload_failed, delay=DELAY)
    assert (settlement.action, settlement.delay, settlement.discard) == (action, delay, discard)


@pytest.mark.parametrize(
    ("error", "action", "delay", "discard"),
    [
        # Refused: nothing records this attempt's outputs.
        (refused(Reason.JOB_FINISHED, "CANCELED"), Action.ACK, 0.0, Attempts(2, 2)),
        (refused(Reason.JOB_FINISHED, "SUCCEEDED"), Action.ACK, 0.0, Attempts(2, 2)),
        (aio_error(not_found("job 01a2")), Action.ACK, 0.0, Attempts(2, 2)),
        (refused(Reason.ATTEMPT_STALE, "RUNNING"), Action.LEAVE, 0.0, Attempts(2, 2)),
        (refused(Reason.ATTEMPT_STALE, "QUEUED"), Action.LEAVE, 0.0, Attempts(2, 2)),
        # Anything else may hide a commit whose answer was lost: keep the outputs, try again.
        (plain(grpc.StatusCode.UNAVAILABLE), Action.REDELIVER, DELAY, None),
        (plain(grpc.StatusCode.DEADLINE_EXCEEDED), Action.REDELIVER, DELAY, None),
    ],
)
def test_a_failed_complete(
    error: grpc.aio.AioRpcError, action: Action, delay: float, discard: Attempts | None
) -> None:
    settlement = after_complete_error(error, 2, left_objects=True, delay=DELAY)
    assert (settlement.action, settlement.delay, settlement.discard) == (action, delay, discard)
    if action != Action.REDELIVER:
        assert settlement.why.startswith("CompleteJob refused (")


def test_a_refused_complete_without_stored_outputs_deletes_nothing() -> None:
    error = refused(Reason.JOB_FINISHED, "CANCELED")
    settlement = after_complete_error(error, 2, left_objects=False, delay=DELAY)
    assert (settlement.action, settlement.discard) == (Action.ACK, None)


def test_the_rest() -> None:
    assert undecodable("media.dispatch.image").action == Action.TERMINATE
    assert handed_back() == Settlement(
        Action.REDELIVER, "worker stopping, returning job to the queue", 0.0
    )
    assert (unexpected(DELAY).action, unexpected(DELAY).delay) == (Action.REDELIVER, DELAY)


def test_attempts() -> None:
    assert [a for a in range(6) if a in ALL_ATTEMPTS] == [1, 2, 3, 4, 5]
    assert [a for a in range(6) if a in Attempts.only(3)] == [3]
    earlier = Attempts.before(3)
    assert earlier is not None and [a for a in range(6) if a in earlier] == [1, 2]
    assert Attempts.before(1) is None


# --- carrying one out ---------------------------------------------------------------------------


class FakeMsg:
    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls = calls
        self.fail = fail

    async def _record(self, what: str) -> None:
        self.calls.append(what)
        if self.fail:
            raise ConnectionError("nats went away")

    async def ack(self) -> None:
        await self._record("ack")

    async def nak(self, delay: float | None = None) -> None:
        await self._record("nak" if delay is None else f"nak {delay}")

    async def term(self) -> None:
        await self._record("term")


class FakeStorage:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def discard_outputs(self, job_id: str, attempts: Attempts, why: str) -> int:
        self.calls.append(f"discard {job_id} {attempts.first}-{attempts.last}")
        return 0


@pytest.mark.parametrize(
    ("settlement", "calls"),
    [
        (Settlement(Action.ACK, "done", discard=Attempts(1, None)), ["discard j 1-None", "ack"]),
        (Settlement(Action.REDELIVER, "retry", DELAY), [f"nak {DELAY}"]),
        (Settlement(Action.REDELIVER, "stopping"), ["nak"]),
        (Settlement(Action.TERMINATE, "garbage"), ["term"]),
        (Settlement(Action.LEAVE, "superseded", discard=Attempts(2, 2)), ["discard j 2-2"]),
    ],
)
async def test_carry_out_deletes_then_settles(settlement: Settlement, calls: list[str]) -> None:
    seen: list[str] = []
    await carry_out(settlement, FakeMsg(seen), FakeStorage(seen), "j")  # type: ignore[arg-type]
    assert seen == calls


async def test_a_nats_hiccup_does_not_escape() -> None:
    seen: list[str] = []
    msg = FakeMsg(seen, fail=True)
    await carry_out(Settlement(Action.ACK, "done"), msg, FakeStorage(seen), "j")  # type: ignore[arg-type]
    assert seen == ["ack"]
