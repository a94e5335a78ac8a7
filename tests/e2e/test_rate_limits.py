"""The per-user rate limit of CreateJob holds across job_service replicas: two replicas on the same
Postgres and NATS, one user's creates spread over both, and together they allow the configured
burst once, not once per replica.

The stack is this module's own: its own NATS (so the limit's key-value bucket is this stack's) and
database, the shared S3 with a bucket of its own, and no worker (created jobs stay queued).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from devstack.deps import Dependencies, NatsServer
from devstack.services import Services, start_services
from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common.auth import bearer_metadata, mint_token
from services.common.errors import details_of
from tests.e2e.helpers import WAIT_SECONDS
from tests.servers import own_dependencies

pytestmark = pytest.mark.e2e

BUCKET = "media-rate-limit-stack"
# One call a minute refills nothing while a test runs: what passes is the burst alone.
RATE_PER_MINUTE = 1
RATE_BURST = 4
REQUEST = job_service_pb2.CreateJobRequest(
    image=job_pb2.ImageParams(prompt="limited", size="256x256")
)

Metadata = tuple[tuple[str, str], ...]


@dataclass
class TwoReplicas:
    services: Services
    secret: str
    channels: list[grpc.aio.Channel]
    replicas: list[job_service_pb2_grpc.JobServiceStub]  # one stub per job_service process

    def user(self, subject: str) -> Metadata:
        return bearer_metadata(mint_token(self.secret, subject))


@pytest_asyncio.fixture(scope="module")
async def stack(
    deps: Dependencies, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TwoReplicas]:
    root = tmp_path_factory.mktemp("rate-limit-stack")
    (root / "logs").mkdir()
    secret = os.urandom(24).hex()
    nats = NatsServer(root / "nats", root / "logs")
    services = None
    channels: list[grpc.aio.Channel] = []
    try:
        own, env = await own_dependencies(deps, nats, "ratelimit")
        env |= {
            "S3_BUCKET": BUCKET,
            "RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
            "RATE_LIMIT_BURST": str(RATE_BURST),
            "MAX_ACTIVE_JOBS_PER_USER": "0",  # jobs stay queued here: only the rate is tested
        }
        services = await asyncio.to_thread(
            start_services, root / "run", own, secret, workers=0, extra_env=env
        )
        await asyncio.to_thread(services.add_job_service)
        addrs = [p.addr for p in (services.job_service, *services.job_service_replicas)]
        channels = [grpc.aio.insecure_channel(addr) for addr in addrs]
        stubs = [job_service_pb2_grpc.JobServiceStub(ch) for ch in channels]
        yield TwoReplicas(services, secret, channels, stubs)
    finally:
        for channel in channels:
            await channel.close()
        if services is not None:
            await asyncio.to_thread(services.stop, 10)
        await asyncio.to_thread(nats.stop)


async def _create(
    stub: job_service_pb2_grpc.JobServiceStub, who: Metadata
) -> job_service_pb2.CreateJobResponse | grpc.aio.AioRpcError:
    try:
        return await stub.CreateJob(REQUEST, metadata=who, timeout=WAIT_SECONDS)
    except grpc.aio.AioRpcError as exc:
        return exc


def _split(
    results: list[job_service_pb2.CreateJobResponse | grpc.aio.AioRpcError],
) -> tuple[list[job_pb2.Job], list[grpc.aio.AioRpcError]]:
    created = [r.job for r in results if isinstance(r, job_service_pb2.CreateJobResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    return created, refused


def _assert_rate_limited(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    details = error.details() or ""
    assert "RATE_LIMIT_PER_MINUTE" in details and "RATE_LIMIT_BURST" in details, details
    delays = [
        info.retry_delay.ToNanoseconds() / 1e9
        for info in details_of(error, error_details_pb2.RetryInfo)
    ]
    assert len(delays) == 1 and 0 < delays[0] <= 60 / RATE_PER_MINUTE, delays


async def _jobs_of(stack: TwoReplicas, who: Metadata) -> int:
    listed = await stack.replicas[1].ListJobs(
        job_service_pb2.ListJobsRequest(page_size=100), metadata=who
    )
    return len(listed.jobs)


async def test_one_users_creates_on_both_replicas_share_one_burst(stack: TwoReplicas) -> None:
    hasty = stack.user("hasty")
    # One call after another, alternating between the replicas.
    results = [await _create(stack.replicas[n % 2], hasty) for n in range(2 * RATE_BURST + 2)]
    created, refused = _split(results)
    assert len(created) == RATE_BURST, results  # per replica, each would have allowed the burst
    assert all(isinstance(r, job_service_pb2.CreateJobResponse) for r in results[:RATE_BURST])
    for error in refused:
        _assert_rate_limited(error)
    assert await _jobs_of(stack, hasty) == RATE_BURST
    # Another user has a budget of their own, on either replica.
    patient = stack.user("patient")
    others = [await _create(stack.replicas[n % 2], patient) for n in range(RATE_BURST)]
    assert len(_split(others)[0]) == RATE_BURST, others


async def test_concurrent_creates_on_both_replicas_cannot_pass_the_burst(
    stack: TwoReplicas,
) -> None:
    crowd = stack.user("crowd")
    results = await asyncio.gather(
        *(_create(stack.replicas[n % 2], crowd) for n in range(4 * RATE_BURST))
    )
    created, refused = _split(list(results))
    assert len(created) == RATE_BURST, results
    for error in refused:
        _assert_rate_limited(error)
    assert await _jobs_of(stack, crowd) == RATE_BURST
