"""A bounded pool of threads for one dependency's blocking calls (SQL, S3): a bulkhead.

Each dependency gets its own, so a dependency that hangs holds only its own threads: a frozen S3
cannot take the threads Postgres calls need, nor the other way round. A call waits for a free
thread and for its result together for at most the bulkhead's `timeout_seconds` and then raises
BulkheadTimeout; a thread stuck in a socket read cannot be interrupted, but it keeps its permit
until it returns, so stuck calls never pile up beyond the pool's size. Once every thread is held
by a call that is past its deadline, the dependency is not answering: further calls fail at once
instead of waiting out the timeout, so that they do not hold their callers (and the server's
slots for calls in flight) for nothing; the first thread that returns ends that.

The threads are daemon threads, started as needed: a thread stuck in a dependency that never
answers must not keep the process from exiting (ThreadPoolExecutor's threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from contextvars import copy_context
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Work = Callable[[], Callable[[], None]]  # runs a call, returns what reports its outcome


class BulkheadTimeout(Exception):
    """No thread came free, or the call did not return, within the timeout (or every thread is
    stuck in a call that did not)."""


class _Call:
    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False  # still running past its deadline, nobody waiting for it


class Bulkhead:
    def __init__(self, name: str, threads: int, timeout_seconds: float) -> None:
        if threads < 1:
            raise ValueError(f"bulkhead {name}: threads must be at least 1, got {threads}")
        if not timeout_seconds > 0:
            raise ValueError(f"bulkhead {name}: the timeout must be positive")
        self.name = name
        self.threads = threads
        self.timeout_seconds = timeout_seconds
        self._permits = asyncio.Semaphore(threads)
        self._busy = 0
        self._abandoned = 0  # calls still running past their deadline, nobody waiting for them
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for work that no submitted call has reserved
        self._started = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Threads taken by calls that have not returned (including ones given up on)."""
        return self._busy

    @property
    def stuck(self) -> bool:
        """Every thread is held by a call past its deadline that nobody waits for any more."""
        return self._abandoned >= self.threads

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        timeout = self.timeout_seconds
        deadline = time.monotonic() + timeout
        if self.stuck:
            raise BulkheadTimeout(
                f"{self.name}: all {self.threads} threads are stuck in calls that did not "
                f"answer within {timeout:g} s"
            )
        if self._permits.locked():
            try:
                await asyncio.wait_for(self._permits.acquire(), timeout)
            except TimeoutError:
                raise BulkheadTimeout(f"{self.name}: no thread free within {timeout:g} s") from None
        else:
            await self._permits.acquire()  # free: returns at once, no task needed
        self._busy += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        call = _Call()
        # The caller's context (trace, log fields) goes with the call, as asyncio.to_thread does.
        context = copy_context()

        def work() -> Callable[[], None]:  # in a bulkhead thread: the call, then its report
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:
                error = exc

            def report() -> None:
                try:
                    loop.call_soon_threadsafe(self._finish, call, future, result, error)
                except RuntimeError:  # the loop is closed: nobody is left to tell
                    pass

            return report

        try:
            self._submit(work)
        except BaseException:  # shut down: nothing runs, so the permit comes back now
            self._done()
            raise
        try:
            # shield: giving up on the result (timeout, or the caller cancelled) must not cancel
            # the future; the permit comes back when the thread itself returns (_finish).
            return await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            if future.done():  # the call's own TimeoutError (socket.timeout is one), not ours
                return future.result()
            self._overdue(call, future)
            raise BulkheadTimeout(f"{self.name}: no answer within {timeout:g} s") from None
        except asyncio.CancelledError:
            # A caller that went away early says nothing about the dependency; a call of its
            # still running at the deadline does.
            loop.call_later(max(0.0, deadline - time.monotonic()), self._overdue, call, future)
            raise

    def _overdue(self, call: _Call, future: asyncio.Future[Any]) -> None:
        if not future.done() and not call.abandoned:
            call.abandoned = True
            self._abandoned += 1

    def _finish(
        self,
        call: _Call,
        future: asyncio.Future[Any],
        result: object,
        error: BaseException | None,
    ) -> None:
        if call.abandoned:
            self._abandoned -= 1
        self._done()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        # Read it here: a result nobody waits for any more must not be logged as never retrieved.
        future.exception()

    def _done(self) -> None:
        self._busy -= 1
        self._permits.release()

    def _submit(self, work: _Work) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"bulkhead {self.name} is shut down")
            # Permits bound the calls in flight to the number of threads, so a call finds an
            # idle thread or room for a new one.
            if self._idle:
                self._idle -= 1  # reserved for this call
                spawn = False
            else:
                self._started += 1
                spawn = True
                number = self._started
        if spawn:
            threading.Thread(target=self._serve, name=f"{self.name}_{number}", daemon=True).start()
        self._work.put(work)

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            report = work()
            del work  # drop the call's arguments and result while idle
            # Counted idle before the result (and with it the permit) reaches the loop, so that
            # the next call never starts a thread while this one is about to be free.
            with self._lock:
                self._idle += 1
            report()
            del report

    def shutdown(self) -> None:
        """Threads that are free end; one stuck in a call ends when the call returns."""
        with self._lock:
            self._closed = True
            started = self._started
        for _ in range(started):
            self._work.put(None)
