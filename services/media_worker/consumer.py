"""Pulling dispatch messages from JetStream and running each in its own task.

One fetch loop per media kind, all sharing one pool of WORKER_CONCURRENCY slots: a loop reserves a
slot before it asks JetStream for a message, so a worker never holds more messages than it can
run, and messages it cannot run yet stay in the stream for other workers.

Each fetch is a long poll for one message. nats-py's `fetch(n>1)` hands back a lone message at
once only while the server honours `no_wait` together with `expires`; on a plain long poll the
server keeps the request open until it has n messages or expires, so a single message would wait
for the whole timeout. With one message per request a message is handed over as soon as it
arrives, whatever the server version, and another request is pending again within a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common.jetstream import DISPATCH_STREAM, worker_consumer

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Coroutine[object, object, None]]
# Re-creates streams and consumers (after a NATS restart that lost its state).
Ensure = Callable[[], Awaitable[None]]

_ERROR_PAUSE_SECONDS = 1.0
_CONSUMER_CHECK_SECONDS = 30.0


class Consumer:
    def __init__(
        self,
        js: JetStreamContext,
        kinds: tuple[str, ...],
        handler: Handler,
        ensure: Ensure,
        *,
        concurrency: int,
        fetch_timeout_seconds: float = 5.0,
    ) -> None:
        self._js = js
        self._kinds = kinds
        self._handler = handler
        self._ensure = ensure
        self._concurrency = concurrency
        self._busy = 0  # jobs running; a fetch waits until this is below the concurrency
        self._room = asyncio.Event()  # set whenever a job ends
        self._fetch_timeout = fetch_timeout_seconds
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._jobs: dict[asyncio.Task[None], Msg] = {}

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        for kind in self._kinds:
            self._loops.append(asyncio.create_task(self._fetch_loop(kind), name=f"fetch-{kind}"))

    async def _subscribe(self, kind: str) -> JetStreamContext.PullSubscription:
        return await self._js.pull_subscribe_bind(worker_consumer(kind), stream=DISPATCH_STREAM)

    async def _wait_for_capacity(self) -> bool:
        """Waits until fewer than `concurrency` jobs run; False when the worker is stopping.

        The fetch that follows does not hold a slot while it long-polls: an idle kind must not
        keep a busy kind waiting. The price is that each kind's loop may see the same free slot,
        so up to (number of kinds - 1) jobs beyond the concurrency can run for a moment.
        """
        while self._busy >= self._concurrency and not self._stopping.is_set():
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({room, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                stopping.cancel()
        return not self._stopping.is_set()

    async def _fetch_loop(self, kind: str) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        last_check = time.monotonic()
        while not self._stopping.is_set():
            if not await self._wait_for_capacity():
                return
            msgs: list[Msg] = []
            try:
                if sub is None:
                    sub = await self._subscribe(kind)
                msgs = await sub.fetch(1, timeout=self._fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
                if time.monotonic() - last_check > _CONSUMER_CHECK_SECONDS:
                    # A lost consumer looks like an idle one to fetch (409s count as timeouts).
                    last_check = time.monotonic()
                    await self._check_consumer(kind)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                msgs = []
                log.warning("fetch on %s failed: %r; retrying", kind, exc)
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = None
                await self._recover()
            for msg in msgs:
                if self._stopping.is_set():
                    # Fetched while stopping: hand it straight back.
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    continue
                self._spawn(msg)

    def _spawn(self, msg: Msg) -> None:
        self._busy += 1
        task = asyncio.create_task(self._handler(msg))
        self._jobs[task] = msg
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._busy -= 1
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job handler crashed", exc_info=task.exception())

    async def _check_consumer(self, kind: str) -> None:
        try:
            await self._js.consumer_info(DISPATCH_STREAM, worker_consumer(kind))
        except NotFoundError:
            log.warning("consumer %s is gone; re-creating it", worker_consumer(kind))
            await self._recover()
        except Exception as exc:
            log.warning("consumer check for %s failed: %r", kind, exc)

    async def _recover(self) -> None:
        await asyncio.sleep(_ERROR_PAUSE_SECONDS)
        try:
            await self._ensure()
        except Exception as exc:
            log.warning("could not re-create streams and consumers yet: %r", exc)

    async def stop(self, grace_seconds: float) -> None:
        """Stops fetching, lets running jobs finish for up to `grace_seconds`, then cancels the
        rest; a cancelled job hands its message back (nak) so it is redelivered at once."""
        deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        # A loop in the middle of a long poll finishes it (its message, if any, is nak'ed) rather
        # than abandoning a pull request that could swallow a message until ack_wait.
        loops = asyncio.gather(*self._loops, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(loops), self._fetch_timeout + 2)
        except TimeoutError:
            for loop in self._loops:
                loop.cancel()
            await loops
        if self._jobs:
            remaining = max(0.0, deadline - time.monotonic())
            log.info("waiting up to %.1f s for %d running job(s)", remaining, len(self._jobs))
            _, pending = await asyncio.wait(set(self._jobs), timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d job(s) did not finish in time; returned to the queue", len(pending))
                await asyncio.wait(pending, timeout=10)
