"""A flush whose deadline passes while nats-server is frozen must not break the connection.

nats-py cancels its PONG future when a flush times out, and the PONG that arrives once the server
answers again then stops the client's read loop: subscriptions go silent with the socket up (seen
as a worker that claimed nothing for minutes after being paused mid-flush).
jetstream.flush bounds only the wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
import pytest_asyncio

from services.common import jetstream
from tests.servers import NatsServer

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    started = NatsServer(tmp_path_factory.mktemp("flush-nats"))
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def test_a_flush_that_times_out_leaves_the_connection_working(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    try:
        sub = await nc.subscribe("flush.test")
        pid = server.server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(nats.errors.FlushTimeoutError):
                await jetstream.flush(nc, 0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.5)  # the late PONG arrives
        await nc.publish("flush.test", b"still here")
        msg = await sub.next_msg(timeout=10)
        assert msg.data == b"still here"
    finally:
        await nc.close()
