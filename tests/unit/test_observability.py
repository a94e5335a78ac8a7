"""Trace context carried through gRPC metadata and NATS headers, the server interceptor's
statuses, metrics and handler cache, log lines with trace and job IDs, and readiness."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import REGISTRY

from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common import logs, tracing
from services.common.config import ServerSettings
from services.common.errors import not_found
from services.common.interceptors import CallContext, Chain, Decode, Errors, Metrics
from services.common.server import ServiceHost

TRACE_ID = os.urandom(16).hex()
SPAN_ID = os.urandom(8).hex()
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def attach_remote_parent() -> object:
    return otel_context.attach(propagate.extract({"traceparent": TRACEPARENT}))


def trace_id_of(ctx: otel_context.Context | None) -> str:
    assert ctx is not None
    return format(trace.get_current_span(ctx).get_span_context().trace_id, "032x")


def test_grpc_metadata_round_trip() -> None:
    token = attach_remote_parent()
    try:
        metadata = tracing.inject_metadata([("authorization", "Bearer x")])
    finally:
        otel_context.detach(token)
    assert ("authorization", "Bearer x") in metadata
    assert trace_id_of(tracing.context_from_metadata(metadata)) == TRACE_ID


def test_nats_headers_round_trip() -> None:
    assert tracing.current_headers() is None  # nothing to carry outside a trace
    token = attach_remote_parent()
    try:
        headers = tracing.current_headers()
        with tracing.producer("media.dispatch.image", headers) as published:
            published["Nats-Msg-Id"] = "7"
    finally:
        otel_context.detach(token)
    assert headers is not None
    assert published["Nats-Msg-Id"] == "7"
    assert trace_id_of(tracing.context_from_headers(published)) == TRACE_ID
    assert tracing.context_from_headers(None) is None
    assert tracing.context_from_headers({"Nats-Msg-Id": "7"}) is None


def test_spans_keep_the_propagated_trace_id() -> None:
    parent = tracing.context_from_headers({"traceparent": TRACEPARENT})
    with tracing.span("work", parent=parent):
        ids = tracing.ids()
    assert ids is not None and ids[0] == TRACE_ID
    assert tracing.ids() is None


def test_log_lines_carry_trace_and_job_ids() -> None:
    formatter = logs.JsonFormatter("test")
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO"})
    assert "trace_id" not in json.loads(formatter.format(record))
    token = attach_remote_parent()
    try:
        with logs.job_context("job-1"):
            line = json.loads(formatter.format(record))
        explicit = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "job_id": "job-2"})
        with logs.job_context("job-1"):
            other = json.loads(formatter.format(explicit))
    finally:
        otel_context.detach(token)
    assert line["trace_id"] == TRACE_ID and line["span_id"] == SPAN_ID
    assert line["job_id"] == "job-1"
    assert other["job_id"] == "job-2"  # an explicit extra wins
    assert "job_id" not in json.loads(formatter.format(record))


# --- the server interceptor and readiness, on an in-process server ---------------------------


class FakeJobs(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str] | None] = []

    async def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.append(tracing.ids())
        if request.job_id == "missing":
            raise not_found("job missing")
        if request.job_id == "boom":
            raise RuntimeError("secret detail")
        return job_service_pb2.GetJobResponse(job=job_pb2.Job(id=request.job_id))


class Host:
    def __init__(self, host: ServiceHost, jobs: FakeJobs, channel: grpc.aio.Channel) -> None:
        self.host = host
        self.jobs = jobs
        self.channel = channel
        self.stub = job_service_pb2_grpc.JobServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.dependency_up = True


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Host]:
    host = ServiceHost(
        "test",
        ServerSettings(
            listen_addr="127.0.0.1:0",
            max_message_bytes=1 << 20,
            blocking_threads=1,
            shutdown_grace_seconds=0,
        ),
    )
    jobs = FakeJobs()
    host.add("media.v1.JobService", job_service_pb2_grpc.add_JobServiceServicer_to_server, jobs)
    port = await host.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=tracing.client_interceptors()
    )
    served = Host(host, jobs, channel)

    async def dependency() -> bool:
        return served.dependency_up

    host.add_check("dependency", dependency)
    try:
        yield served
    finally:
        await channel.close()
        await host.stop()


def count(method: str, code: str) -> float:
    labels = {"service": "media.v1.JobService", "method": method, "code": code}
    return REGISTRY.get_sample_value("media_rpc_requests_total", labels) or 0.0


def latency_count(method: str) -> float:
    labels = {"service": "media.v1.JobService", "method": method}
    return REGISTRY.get_sample_value("media_rpc_latency_seconds_count", labels) or 0.0


async def test_interceptor_statuses_metrics_and_trace(served: Host) -> None:
    ok, missing, internal = (
        count("GetJob", "OK"),
        count("GetJob", "NOT_FOUND"),
        count("GetJob", "INTERNAL"),
    )
    timed = latency_count("GetJob")
    get = job_service_pb2.GetJobRequest

    # Called inside a trace: the client interceptor carries it, the server continues it.
    token = attach_remote_parent()
    try:
        reply = await served.stub.GetJob(get(job_id="a"))
    finally:
        otel_context.detach(token)
    assert reply.job.id == "a"
    assert served.jobs.seen[-1] is not None and served.jobs.seen[-1][0] == TRACE_ID
    await served.stub.GetJob(get(job_id="b"))  # outside any trace
    assert served.jobs.seen[-1] is None

    with pytest.raises(grpc.aio.AioRpcError) as not_found_error:
        await served.stub.GetJob(get(job_id="missing"))
    assert not_found_error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as internal_error:
        await served.stub.GetJob(get(job_id="boom"))
    assert internal_error.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (internal_error.value.details() or "")

    assert count("GetJob", "OK") == ok + 2
    assert count("GetJob", "NOT_FOUND") == missing + 1
    assert count("GetJob", "INTERNAL") == internal + 1
    assert latency_count("GetJob") == timed + 4
    # Health checks are served but not counted.
    await served.health.Check(health_pb2.HealthCheckRequest(service=""))
    health = {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"}
    assert REGISTRY.get_sample_value("media_rpc_requests_total", health) is None


async def test_interceptor_builds_each_wrapper_once() -> None:
    async def handle(request, context):  # type: ignore[no-untyped-def]
        return request

    handler = grpc.unary_unary_rpc_method_handler(handle)
    health = grpc.unary_unary_rpc_method_handler(handle)

    async def continuation(details):  # type: ignore[no-untyped-def]
        return health if details.method.startswith("/grpc.") else handler

    interceptor = Chain(Metrics(), CallContext(), Errors(), Decode())
    details = _Details("/media.v1.JobService/GetJob")
    first = await interceptor.intercept_service(continuation, details)
    second = await interceptor.intercept_service(continuation, details)
    assert first is second and first is not handler
    # grpc's own services (health, reflection) are passed through as they are.
    probe = _Details("/grpc.health.v1.Health/Check")
    assert await interceptor.intercept_service(continuation, probe) is health


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_readiness_follows_checks_and_liveness_stays(served: Host) -> None:
    async def status(service: str) -> int:
        reply = await served.health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(reply.status)

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    readiness = served.host.readiness
    assert await readiness.check_now()
    assert await status("") == serving

    served.dependency_up = False
    assert not await readiness.check_now()
    assert readiness.failing == {"dependency"}
    assert await status("") == not_serving
    assert await status("media.v1.JobService") == not_serving
    assert await status("liveness") == serving

    served.dependency_up = True
    assert await readiness.check_now()
    assert await status("") == serving

    await served.host.set_serving(False)  # the service's own say (start-up, draining)
    assert await status("") == not_serving
    await served.host.set_serving(True)
    assert await status("") == serving

    await readiness.stop()  # shutdown: stays NOT_SERVING whatever the checks say
    assert not await readiness.check_now()
    assert await status("") == not_serving
    assert await status("liveness") == serving
