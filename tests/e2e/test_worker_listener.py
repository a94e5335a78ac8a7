"""WorkerService on a listener of its own (WORKER_LISTEN_ADDR): the public port does not serve it
at all, whatever the caller's token, so NetworkPolicies can keep everyone but the workers off it
by port. The session stack runs it that way, as the manifests do."""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.e2e.helpers import create, wait_terminal

pytestmark = pytest.mark.e2e

UNKNOWN_JOB = str(uuid.UUID(int=7))  # a well-formed ID no job has


def _worker_calls(
    stub: worker_service_pb2_grpc.WorkerServiceStub, metadata: tuple[tuple[str, str], ...]
) -> dict[str, grpc.aio.UnaryUnaryCall]:  # type: ignore[type-arg]
    return {
        "ClaimJob": stub.ClaimJob(
            worker_service_pb2.ClaimJobRequest(job_id=UNKNOWN_JOB), metadata=metadata, timeout=10
        ),
        "ReportProgress": stub.ReportProgress(
            worker_service_pb2.ReportProgressRequest(job_id=UNKNOWN_JOB, attempt=1, progress=5),
            metadata=metadata,
            timeout=10,
        ),
        "CompleteJob": stub.CompleteJob(
            worker_service_pb2.CompleteJobRequest(
                job_id=UNKNOWN_JOB,
                attempt=1,
                failure=worker_service_pb2.JobFailure(
                    code=job_pb2.ERROR_CODE_INTERNAL, message="x", retryable=False
                ),
            ),
            metadata=metadata,
            timeout=10,
        ),
    }


async def test_the_public_port_does_not_serve_worker_service_even_to_a_worker(
    stack, clients
) -> None:
    async with grpc.aio.insecure_channel(stack.job_service_addr) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        for who in (clients.worker, clients.alice, ()):
            for name, call in _worker_calls(stub, who).items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, (name, who)
        # JobService is still there, and health too.
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        await jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=clients.alice, timeout=10)
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_worker_port_serves_worker_service_and_nothing_of_the_clients(
    stack, clients
) -> None:
    async with grpc.aio.insecure_channel(stack.worker_service_addr) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        # Served: a worker gets the service's own answer (no such job), a client the refusal.
        for name, call in _worker_calls(stub, clients.worker).items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, (name, caught.value)
        for name, call in _worker_calls(stub, clients.alice).items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        # The clients' API is not on the workers' port.
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.ListJobs(
                job_service_pb2.ListJobsRequest(), metadata=clients.alice, timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        for service in ("", "liveness", "media.v1.WorkerService"):
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service)
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_the_workers_run_jobs_through_the_worker_port(stack, clients) -> None:
    # The workers know only the worker port: a job that succeeds was claimed and completed there.
    assert all(w.env["JOB_SERVICE_ADDR"] == stack.worker_service_addr for w in stack.worker_procs())
    job = await create(
        clients,
        clients.alice,
        image=job_pb2.ImageParams(prompt="via the worker port", size="256x256"),
    )
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    assert done.attempt == 1 and len(done.outputs) == 1
