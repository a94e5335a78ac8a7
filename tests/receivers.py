"""A real HTTP server that receives webhooks in tests (aiohttp.web on loopback): it records every
request and answers as told (a status per request, or holds a request until released), and
verifies signatures with the reference implementation (standardwebhooks), never with ours."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.servers import free_port

# A bound that turns a hang into a failure; never a statement about how fast delivery is.
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        """The body as JSON once its signature verifies with `secret` (raises otherwise)."""
        verified: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return verified

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


class Receiver:
    """`url(path)` is where to send; each path keeps its own record and answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._statuses: dict[str, deque[int]] = defaultdict(deque)
        self._bodies: dict[str, bytes] = {}
        self._holds: dict[str, asyncio.Event] = {}
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        for hold in self._holds.values():
            hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, path: str, *statuses: int, body: bytes = b"ok") -> None:
        """The next requests to `path` get these statuses, in order; then 200."""
        self._statuses[path].extend(statuses)
        self._bodies[path] = body

    def hold(self, path: str) -> asyncio.Event:
        """Requests to `path` wait (unanswered) until the returned event is set."""
        event = self._holds[path] = asyncio.Event()
        return event

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(
        self, path: str, count: int, limit_seconds: float = WAIT_SECONDS
    ) -> list[Received]:
        """The first `count` requests to `path`, once they have arrived."""

        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.at(path)) >= count)

        try:
            await asyncio.wait_for(arrived(), limit_seconds)
        except TimeoutError:
            raise AssertionError(
                f"{path} received {len(self.at(path))} request(s), not {count}, "
                f"within {limit_seconds:.0f} s"
            ) from None
        return self.at(path)[:count]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received = Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        async with self._arrived:
            self.received.append(received)
            self._arrived.notify_all()
        hold = self._holds.get(request.path)
        if hold is not None:
            await hold.wait()
        queued = self._statuses[request.path]
        status = queued.popleft() if queued else 200
        headers = {"Location": self.url("/redirected")} if 300 <= status < 400 else None
        return web.Response(
            status=status, body=self._bodies.get(request.path, b"ok"), headers=headers
        )
