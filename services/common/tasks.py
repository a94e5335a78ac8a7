"""Running awaitables side by side, and one again and again in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Like asyncio.gather, but the first failure (or a cancellation) cancels the rest and waits
    for them, so no paid call or upload outlives the outcome; the first error is raised as is."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def every(
    interval_seconds: float,
    run_round: Callable[[], Awaitable[object]],
    what: str,
    log: logging.Logger,
) -> None:
    """Runs `run_round` every `interval_seconds` until cancelled. A failing round does not end the
    loop: `log` says "<what> failed" once per outage and "<what> recovered" after it."""
    failing = False
    while True:
        try:
            await run_round()
            if failing:
                log.info("%s recovered", what)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("%s failed: %s", what, exc)
            failing = True
        await asyncio.sleep(interval_seconds)
