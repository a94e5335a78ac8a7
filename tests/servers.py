"""The servers that tests start for themselves, launched the way the local stack launches them, so
that there is one way to run a nats-server and one way to pick a free port.

    free_port()        a local port nothing listens on (devstack.procs.free_port)
    NatsServer(root)   nats-server with JetStream for async tests; stop() then start() keeps its
                       URL and its store
    own_dependencies   for a stack of a test module's own: its nats-server started and a database
                       of its own, beside the session's S3

Tests that wire a nats-server into a devstack Dependencies use devstack.deps.NatsServer itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from devstack import deps
from devstack.procs import free_port

__all__ = ["NatsServer", "free_port", "own_dependencies"]

# Bounds that turn a hang into a failure; never a statement about how fast nats-server is.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class NatsServer:
    """devstack's nats-server (JetStream store under `root`, log in `root`/logs/nats.log), with
    start and stop that leave the event loop running, so that clients under test on the same loop
    see the server go and come back."""

    def __init__(self, root: Path) -> None:
        self.server = deps.NatsServer(root, root / "logs")

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        return self.server.running

    async def start(self) -> None:
        """Returns once /healthz is ok, i.e. JetStream is up and its streams have recovered."""
        # Off the main thread, like tests/faults' spawn(): from the main thread devstack forks
        # with a preexec_fn, and a fork while gRPC calls are in flight here can crash the child
        # before it execs; from another thread subprocess runs no fork handlers at all.
        await asyncio.to_thread(self.server.start, START_TIMEOUT)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the port and the store stay for start()."""
        await asyncio.to_thread(self.server.stop, STOP_TIMEOUT)


async def own_dependencies(
    session: deps.Dependencies, nats: deps.NatsServer, name: str
) -> tuple[deps.Dependencies, dict[str, str]]:
    """Starts `nats` (the caller stops it) and creates a database of its own on the session's
    Postgres; returns the Dependencies of a stack on them and the session's S3, and the S3
    credentials that stack's services need (each such stack also picks a bucket of its own)."""
    await asyncio.to_thread(nats.start)
    database_url = await asyncio.to_thread(session.create_database, f"{name}_{os.urandom(4).hex()}")
    own = deps.Dependencies(
        database_url=database_url,
        nats_url=nats.url,
        s3_endpoint_url=session.s3_endpoint_url,
        nats=nats,
    )
    env = {k: v for k, v in session.env().items() if k.startswith(("AWS_", "S3_REGION"))}
    return own, env
