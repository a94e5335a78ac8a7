"""Every server answers gRPC health checks and server reflection, so grpcurl needs no files."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

pytestmark = pytest.mark.e2e


async def list_services(addr: str) -> list[str]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            return [s.name for s in response.list_services_response.service]
    return []


# Every server has these; each serves its own API besides (a worker: nothing else).
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_health_and_reflection_on_every_server(stack) -> None:
    # job_service serves two listeners: the public one (clients: jobs, webhook endpoints, the
    # inbox) and the internal one (workers; the reads of the notifier and the webhook sender).
    assert stack.worker_service_addr != stack.job_service_addr
    expected = {
        stack.job_service_addr: {
            "media.v1.JobService",
            "media.v1.WebhookService",
            "media.v1.NotificationService",
        },
        stack.worker_service_addr: {"media.v1.WorkerService", "media.v1.JobReaderService"},
        stack.notifier_addr: {"media.v1.NotifierService"},
        stack.webhooks.addr: set(),  # the sender serves nothing but health
    }
    workers = stack.worker_addrs()
    assert workers, "the stack runs workers"
    for addr in workers:
        expected[addr] = set()
    for addr, services in expected.items():
        async with grpc.aio.insecure_channel(addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert set(await list_services(addr)) == services | STANDARD, addr
