"""Readiness: the gRPC health status "" (and each service name) follows the service's
dependencies.

Each service registers cheap checks (a `SELECT 1`, `nc.is_connected`, a health check of
job_service); they run together every READINESS_CHECK_SECONDS, each bounded by the same time, and
the server is SERVING only while every check passes and the service itself has not switched
readiness off (starting up, shutting down). Transitions are logged with the failing checks.
The name "liveness" is not touched here: an unreachable dependency must make a pod unready, not
get it restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]
Apply = Callable[[bool], Awaitable[None]]


class Readiness:
    def __init__(self, apply: Apply, *, interval_seconds: float) -> None:
        self._apply = apply
        self._interval = interval_seconds
        self._checks: dict[str, Check] = {}
        self._failing: set[str] = set()
        self._reported: set[str] = set()  # the failing set last logged
        self._gate = True  # the service's own say: False while starting or shutting down
        self._stopped = False
        self._serving: bool | None = None  # what was last applied
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    @property
    def failing(self) -> frozenset[str]:
        return frozenset(self._failing)

    def add_check(self, name: str, check: Check) -> None:
        """`check` returns True when the dependency is usable; raising or timing out is False."""
        self._checks[name] = check

    async def start(self) -> None:
        """Applies the first result at once, then checks periodically."""
        await self.check_now()
        if self._checks and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="readiness")

    async def set_gate(self, open_: bool) -> None:
        self._gate = open_
        if open_:
            await self.check_now()  # fresh results, not the last round's
        else:
            await self._update()

    async def stop(self) -> None:
        """NOT_SERVING from now on (shutdown); the checks stop."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._update()

    async def check_now(self) -> bool:
        if self._checks:
            names = list(self._checks)
            results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
            self._failing = {n for n, ok in zip(names, results, strict=True) if not ok}
        return await self._update()

    async def _run(self, check: Check) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), self._interval))
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("readiness check failed")

    async def _update(self) -> bool:
        async with self._lock:
            serving = self._gate and not self._stopped and not self._failing
            previous = self._serving
            if serving != previous:
                self._serving = serving
                await self._apply(serving)
            # Logged on every change of state, and of which dependencies fail (the latter only
            # while the service itself wants to serve: not while it starts or drains).
            watched = self._gate and not self._stopped
            if serving != previous or (watched and self._failing != self._reported):
                self._reported = set(self._failing)
                self._log(previous, serving)
            return serving

    def _log(self, previous: bool | None, serving: bool) -> None:
        if serving:
            if previous is False:
                log.info("ready: every dependency is reachable")
            return
        if previous is None and not self._failing:
            return  # starting with readiness held back: nothing worth a line
        if self._stopped:
            log.info("not ready: shutting down")
        elif self._failing:
            log.warning(
                "not ready: %s unreachable",
                ", ".join(sorted(self._failing)),
                extra={"failing": ",".join(sorted(self._failing))},
            )
        else:
            log.info("not ready: starting or draining")
