"""A flush whose deadline passes before the server's PONG arrives must not break the connection.

nats-py cancels its PONG future when a flush times out, and the PONG that arrives later then
stops the client's read loop: subscriptions go silent with the socket up (seen as a worker that
claimed nothing for minutes after being paused mid-flush). jetstream.flush bounds only the wait.

The PONG is held back by a relay between client and server rather than by stopping nats-server:
a SIGSTOP is not instantaneous, and on a loaded machine the server sometimes answered first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
import pytest_asyncio

from services.common import jetstream
from tests.servers import NatsServer

pytestmark = pytest.mark.integration


class HeldRelay:
    """TCP relay to nats-server whose server-to-client direction can be held: bytes read while
    held are forwarded, in order, once released."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = asyncio.Event()
        self.open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for task in (
            asyncio.create_task(self._pipe(client_r, server_w, held=False)),
            asyncio.create_task(self._pipe(server_r, client_w, held=True)),
        ):
            self._tasks.add(task)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, held: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                if held:
                    await self.open.wait()
                w.write(data)
                await w.drain()
        w.close()


@pytest_asyncio.fixture
async def relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[HeldRelay, str]]:
    server = NatsServer(tmp_path_factory.mktemp("flush-nats"))
    await server.start()
    held = HeldRelay(server.server.port)
    try:
        yield held, await held.start()
    finally:
        await held.stop()
        await server.stop()


async def test_a_flush_that_times_out_leaves_the_connection_working(
    relay: tuple[HeldRelay, str],
) -> None:
    held, url = relay
    nc = await nats.connect(url)
    try:
        sub = await nc.subscribe("flush.test")
        await jetstream.flush(nc, 5)  # the SUB is in before anything is held
        held.open.clear()
        with pytest.raises(nats.errors.FlushTimeoutError):
            await jetstream.flush(nc, 0.5)
        held.open.set()
        await asyncio.sleep(0.5)  # the late PONG arrives
        await nc.publish("flush.test", b"still here")
        msg = await sub.next_msg(timeout=10)
        assert msg.data == b"still here"
    finally:
        await nc.close()
