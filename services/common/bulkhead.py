"""A bounded pool of threads for one dependency's blocking calls (SQL, S3): a bulkhead.

Each dependency gets its own, so a dependency that hangs holds only its own threads: a frozen S3
cannot take the threads Postgres calls need, nor the other way round. A call waits for a free
thread and for its result together for at most the bulkhead's `timeout_seconds` and then raises
BulkheadTimeout; a thread stuck in a socket read cannot be interrupted, but it keeps its permit
until it returns, so stuck calls never pile up beyond the pool's size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BulkheadTimeout(Exception):
    """No thread came free, or the call did not return, within the timeout."""


class Bulkhead:
    def __init__(self, name: str, threads: int, timeout_seconds: float) -> None:
        self.name = name
        self.threads = threads
        self.timeout_seconds = timeout_seconds
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._permits = asyncio.Semaphore(threads)
        self._busy = 0

    @property
    def busy(self) -> int:
        """Threads taken by calls that have not returned (including ones given up on)."""
        return self._busy

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        timeout = self.timeout_seconds
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._permits.acquire(), timeout)
        except TimeoutError:
            raise BulkheadTimeout(f"{self.name}: no thread free within {timeout:.1f} s") from None
        self._busy += 1
        loop = asyncio.get_running_loop()
        # The caller's context (trace, log fields) goes with the call, as asyncio.to_thread does.
        context = copy_context()
        future = loop.run_in_executor(self._executor, lambda: context.run(fn, *args, **kwargs))
        future.add_done_callback(self._release)
        try:
            # shield: giving up on the result must not cancel the bookkeeping of the thread.
            return await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise BulkheadTimeout(f"{self.name}: no answer within {timeout:.1f} s") from None

    def _release(self, _: object) -> None:
        self._busy -= 1
        self._permits.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
