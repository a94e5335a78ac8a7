"""Session fixtures: real PostgreSQL, nats-server (JetStream) and S3 (moto) started by the
devstack, the services as real processes, and clients for them."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from devstack.deps import Dependencies, start_dependencies
from devstack.services import USER_LIMITS_OFF, Services, start_services
from media.v1 import (
    job_service_pb2_grpc,
    notifier_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from services.common.auth import bearer_metadata, mint_token

# The webhook sender's retry schedule compressed (three retries), and its poll for due retries.
WEBHOOKS_QUICK = {"WEBHOOK_RETRY_SCHEDULE": "0.3,0.3,0.3", "WEBHOOK_POLL_SECONDS": "0.1"}


@pytest.fixture(scope="session")
def deps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dependencies]:
    started = start_dependencies(tmp_path_factory.mktemp("deps"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="session")
def stack(
    deps: Dependencies, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    run_dir: Path = tmp_path_factory.mktemp("services")
    # The session's tests create many jobs quickly as one user (the fuzz tests hundreds): per-user
    # limits off, whatever the environment says (test_security.py and test_rate_limits.py have
    # stacks of their own with limits on). The sweeper is off too: some tests count the objects
    # in the bucket before and after (test_sweeper.py has a stack of its own for it). Webhook
    # retries come within a second, so that a test sees a whole schedule play out.
    env = {**USER_LIMITS_OFF, "SWEEP_INTERVAL_SECONDS": "0", **WEBHOOKS_QUICK}
    started = start_services(run_dir, deps, secret, workers=1, extra_env=env)
    try:
        yield started
    finally:
        started.stop()


class Clients:
    """Stubs for one stack, and metadata for a few identities."""

    def __init__(self, stack: Services, secret: str) -> None:
        self.secret = secret
        self.job_channel = grpc.aio.insecure_channel(stack.job_service_addr)
        self.notifier_channel = grpc.aio.insecure_channel(stack.notifier_addr)
        # WorkerService has a listener of its own (WORKER_LISTEN_ADDR), where workers call it.
        self.worker_channel = grpc.aio.insecure_channel(stack.worker_service_addr)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.job_channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self.worker_channel)
        self.notifier = notifier_service_pb2_grpc.NotifierServiceStub(self.notifier_channel)
        self.alice = self.user("alice")
        self.bob = self.user("bob")
        self.worker = bearer_metadata(mint_token(secret, "test-worker", roles=("worker",)))

    def user(self, subject: str) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(mint_token(self.secret, subject))

    async def close(self) -> None:
        await self.job_channel.close()
        await self.notifier_channel.close()
        await self.worker_channel.close()


@pytest_asyncio.fixture(scope="session")
async def clients(stack: Services, secret: str) -> AsyncIterator[Clients]:
    made = Clients(stack, secret)
    try:
        yield made
    finally:
        await made.close()


@contextmanager
def workers_paused(stack: Services) -> Iterator[None]:
    """Freezes every worker process (SIGSTOP), so a test can see a job before any worker
    touches it or act as the worker itself; resumes them whatever happens."""
    pids = [p.pid for p in stack.worker_procs()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
