"""services.common.tasks.every: a background round that outlives its failures, logged once per
outage (the metrics sampler's and the sweeper's loop)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.tasks import every


async def test_a_failing_round_is_logged_once_per_outage_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = [None, RuntimeError("down"), RuntimeError("still down"), None, None]
    rounds = 0
    done = asyncio.Event()

    async def run_round() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == len(outcomes):
            done.set()
        outcome = outcomes[min(rounds, len(outcomes)) - 1]
        if outcome is not None:
            raise outcome

    log = logging.getLogger("test.every")
    with caplog.at_level(logging.INFO, logger="test.every"):
        task = asyncio.create_task(every(0.001, run_round, "probing", log))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r.getMessage() for r in caplog.records] == [
        "probing failed: down",
        "probing recovered",
    ]
