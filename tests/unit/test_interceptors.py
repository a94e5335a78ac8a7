"""The server interceptor chain seen from outside, on an in-process ServiceHost: statuses,
metrics, spans and log fields for unary calls and server streams alike, undecodable requests,
refusal while draining, and cancelled streams (which must close the handler in the call's own
context, without OpenTelemetry's "Failed to detach context")."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import logs, tracing
from services.common.config import ServerSettings
from services.common.errors import not_found
from services.common.server import ServiceHost

TRACE_ID = os.urandom(16).hex()
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{os.urandom(8).hex()}-01"),)
JOBS = "media.v1.JobService"
NOTIFIER = "media.v1.NotifierService"
BIG = "x" * 200_000  # a few of these fill the stream's flow-control window


def bound_job_id() -> str:
    """The job_id a log line written now would carry."""
    record = logging.makeLogRecord({"msg": "probe", "levelname": "INFO"})
    line = json.loads(logs.JsonFormatter("test").format(record))
    return str(line.get("job_id", ""))


class Jobs(job_service_pb2_grpc.JobServiceServicer):
    async def GetJob(
        self,
        request: job_service_pb2.GetJobRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.GetJobRequest, job_service_pb2.GetJobResponse
        ],
    ) -> job_service_pb2.GetJobResponse:
        if request.job_id == "missing":
            raise not_found("job missing")
        if request.job_id == "boom":
            raise RuntimeError("secret detail")
        if request.job_id == "denied":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        return job_service_pb2.GetJobResponse(job=job_pb2.Job(id=bound_job_id()))


class Watches(notifier_service_pb2_grpc.NotifierServiceServicer):
    def __init__(self) -> None:
        # The job_id bound while each stream's handler cleaned up (its `finally`).
        self.closed: list[str] = []

    async def WatchJob(
        self,
        request: notifier_service_pb2.WatchJobRequest,
        context: grpc.aio.ServicerContext[
            notifier_service_pb2.WatchJobRequest, notifier_service_pb2.WatchJobResponse
        ],
    ) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
        try:
            if request.job_id == "missing":
                raise not_found("job missing")
            if request.job_id == "denied":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
            yield notifier_service_pb2.WatchJobResponse(job=job_pb2.Job(id=bound_job_id()))
            if request.job_id == "boom":
                raise RuntimeError("secret detail")
            if request.job_id == "flood":
                # Faster than the client reads: the handler ends up waiting on flow control.
                while True:
                    job = job_pb2.Job(id=request.job_id, status_message=BIG)
                    yield notifier_service_pb2.WatchJobResponse(job=job)
            yield notifier_service_pb2.WatchJobResponse(job=job_pb2.Job(id=bound_job_id()))
        finally:
            self.closed.append(bound_job_id())


class Served:
    def __init__(self, host: ServiceHost, watches: Watches, channel: grpc.aio.Channel) -> None:
        self.host = host
        self.watches = watches
        self.channel = channel
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.notifier = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def watch(
        self, job_id: str, metadata: tuple[tuple[str, str], ...] = ()
    ) -> list[notifier_service_pb2.WatchJobResponse]:
        request = notifier_service_pb2.WatchJobRequest(job_id=job_id)
        return [reply async for reply in self.notifier.WatchJob(request, metadata=metadata)]


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    host = ServiceHost(
        "test",
        ServerSettings(
            listen_addr="127.0.0.1:0",
            max_message_bytes=1 << 20,
            blocking_threads=1,
            shutdown_grace_seconds=0,
        ),
    )
    watches = Watches()
    host.add(JOBS, job_service_pb2_grpc.add_JobServiceServicer_to_server, Jobs())
    host.add(NOTIFIER, notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server, watches)
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(host, watches, channel)
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, with spans kept in memory (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_enabled", True)
    yield exporter
    provider.shutdown()


def count(service: str, method: str, code: str) -> float:
    labels = {"service": service, "method": method, "code": code}
    return REGISTRY.get_sample_value("media_rpc_requests_total", labels) or 0.0


def counts(service: str, method: str) -> dict[str, float]:
    return {code.name: count(service, method, code.name) for code in grpc.StatusCode}


def latency_count(service: str, method: str) -> float:
    labels = {"service": service, "method": method}
    return REGISTRY.get_sample_value("media_rpc_latency_seconds_count", labels) or 0.0


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {code: after[code] - before[code] for code in after if after[code] != before[code]}


async def eventually(probe: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    async def loop() -> None:
        while True:
            if probe():
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(loop(), seconds)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


# --- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("traced", ["no-sdk", "sdk"])
async def test_a_cancelled_stream_closes_its_handler_in_the_call_without_detach_errors(
    served: Served, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest, traced: str
) -> None:
    if traced == "sdk":
        request.getfixturevalue("spans")
    before = counts(NOTIFIER, "WatchJob")
    closed = len(served.watches.closed)
    call = served.notifier.WatchJob(
        notifier_service_pb2.WatchJobRequest(job_id="flood"), metadata=TRACEPARENT
    )
    await call.read()
    # Let the handler fill the window and wait on flow control, then hang up.
    await asyncio.sleep(0.2)
    call.cancel()
    await eventually(lambda: len(served.watches.closed) > closed, "the handler is closed")
    # Anything left to a finalizer (an abandoned generator) would run by now.
    gc.collect()
    await asyncio.sleep(0.2)

    assert not [r for r in caplog.records if "Failed to detach context" in r.getMessage()]
    # Closed by the call itself, still inside its log context.
    assert served.watches.closed[-1] == "flood"
    await eventually(
        lambda: grown(before, counts(NOTIFIER, "WatchJob")) == {"CANCELLED": 1},
        "the cancelled stream is counted",
    )


async def test_stream_statuses_and_metrics(served: Served) -> None:
    before = counts(NOTIFIER, "WatchJob")
    timed = latency_count(NOTIFIER, "WatchJob")

    replies = await served.watch("job-1")
    assert [r.job.id for r in replies] == ["job-1", "job-1"]  # job_id bound while it streams
    code, _ = await status_of(served.watch("missing"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await status_of(served.watch("boom"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    code, details = await status_of(served.watch("denied"))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "not yours")

    assert grown(before, counts(NOTIFIER, "WatchJob")) == {
        "OK": 1,
        "NOT_FOUND": 1,
        "INTERNAL": 1,
        "PERMISSION_DENIED": 1,
    }
    assert latency_count(NOTIFIER, "WatchJob") == timed  # streams are not timed


async def test_unary_statuses_and_metrics(served: Served) -> None:
    before = counts(JOBS, "GetJob")
    timed = latency_count(JOBS, "GetJob")
    get = job_service_pb2.GetJobRequest

    assert (await served.jobs.GetJob(get(job_id="job-2"))).job.id == "job-2"
    code, _ = await status_of(served.jobs.GetJob(get(job_id="missing")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await status_of(served.jobs.GetJob(get(job_id="boom")))
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")
    code, details = await status_of(served.jobs.GetJob(get(job_id="denied")))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "not yours")

    assert grown(before, counts(JOBS, "GetJob")) == {
        "OK": 1,
        "NOT_FOUND": 1,
        "INTERNAL": 1,
        "PERMISSION_DENIED": 1,
    }
    assert latency_count(JOBS, "GetJob") == timed + 4


# --- undecodable requests, draining --------------------------------------------------------------


async def test_undecodable_requests_are_invalid_argument(served: Served) -> None:
    # Invalid UTF-8 in job_id (field 1): well-formed on the wire, but it does not parse.
    body = bytes([1 << 3 | 2, 4]) + b"\xff\xfe\xfd\xfc"
    unary = served.channel.unary_unary(f"/{JOBS}/GetJob")
    stream = served.channel.unary_stream(f"/{NOTIFIER}/WatchJob")
    before = counts(JOBS, "GetJob"), counts(NOTIFIER, "WatchJob")

    code, details = await status_of(unary(body))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("the request does not parse")
    stream_call = stream(b"\xff")  # not even well-formed

    async def drain_stream() -> None:
        async for _ in stream_call:
            pass

    code, details = await status_of(drain_stream())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("the request does not parse")
    assert grown(before[0], counts(JOBS, "GetJob")) == {"INVALID_ARGUMENT": 1}
    assert grown(before[1], counts(NOTIFIER, "WatchJob")) == {"INVALID_ARGUMENT": 1}


async def test_draining_refuses_new_calls_unavailable_uncounted(served: Served) -> None:
    gate = served.host._gate  # what stop() sets before it stops the server
    before = counts(JOBS, "GetJob"), counts(NOTIFIER, "WatchJob")
    gate.draining = True
    try:
        code, details = await status_of(
            served.jobs.GetJob(job_service_pb2.GetJobRequest(job_id="a"))
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in details
        code, _ = await status_of(served.watch("a"))
        assert code == grpc.StatusCode.UNAVAILABLE
        # Not even parsed: a body that does not decode is refused the same way.
        code, _ = await status_of(served.channel.unary_unary(f"/{JOBS}/GetJob")(b"\xff"))
        assert code == grpc.StatusCode.UNAVAILABLE
        # Health checks still answer.
        reply = await served.health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert gate.refused == 3
    finally:
        gate.draining = False
    # Refused calls never reached the chain: nothing counted.
    assert counts(JOBS, "GetJob") == before[0]
    assert counts(NOTIFIER, "WatchJob") == before[1]


# --- spans and log fields ----------------------------------------------------------------------


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_server_spans_for_unary_calls_and_streams(
    served: Served, spans: InMemorySpanExporter
) -> None:
    get = job_service_pb2.GetJobRequest
    await served.jobs.GetJob(get(job_id="a"), metadata=TRACEPARENT)
    await status_of(served.jobs.GetJob(get(job_id="missing")))
    await status_of(served.jobs.GetJob(get(job_id="boom")))
    await served.watch("b", metadata=TRACEPARENT)
    await status_of(served.watch("boom"))

    unary = by_name(spans, f"{JOBS}/GetJob")
    stream = by_name(spans, f"{NOTIFIER}/WatchJob")
    assert len(unary) == 3 and len(stream) == 2
    for span, method in [*((s, "GetJob") for s in unary), *((s, "WatchJob") for s in stream)]:
        assert span.kind == SpanKind.SERVER
        attributes = dict(span.attributes or {})
        service = JOBS if method == "GetJob" else NOTIFIER
        assert {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}.items() <= (
            attributes.items()
        )
    ok, missing, boom = unary
    assert format(ok.context.trace_id, "032x") == TRACE_ID  # the caller's trace continues
    assert ok.status.status_code == StatusCode.UNSET and not ok.events
    assert "rpc.grpc.status_code" not in dict(ok.attributes or {})
    # A caller's error: the code is noted, the span is not failed.
    assert dict(missing.attributes or {})["rpc.grpc.status_code"] == 5
    assert missing.status.status_code == StatusCode.UNSET
    # An unexpected error: the span fails with the exception itself, not grpc's abort.
    assert dict(boom.attributes or {})["rpc.grpc.status_code"] == 13
    assert boom.status.status_code == StatusCode.ERROR
    assert boom.status.description == "INTERNAL"
    [event] = boom.events
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"

    ok_stream, boom_stream = stream
    assert format(ok_stream.context.trace_id, "032x") == TRACE_ID
    assert ok_stream.status.status_code == StatusCode.UNSET
    assert boom_stream.status.status_code == StatusCode.ERROR
    assert [dict(e.attributes or {})["exception.type"] for e in boom_stream.events] == [
        "RuntimeError"
    ]


class Lines(logging.Handler):
    """Log lines as JSON, formatted when written (inside the call's context)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_an_unexpected_error_is_logged_in_the_call_context(served: Served) -> None:
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    try:
        await status_of(
            served.jobs.GetJob(job_service_pb2.GetJobRequest(job_id="boom"), metadata=TRACEPARENT)
        )
        await status_of(served.watch("boom", metadata=TRACEPARENT))
    finally:
        root.removeHandler(lines)
    errors = [line for line in lines.lines if str(line["msg"]).startswith("unhandled error")]
    assert [line["msg"] for line in errors] == [
        f"unhandled error in /{JOBS}/GetJob",
        f"unhandled error in /{NOTIFIER}/WatchJob",
    ]
    for line in errors:
        assert line["level"] == "error" and line["job_id"] == "boom"
        assert line["logger"] == "services.common.interceptor"  # as before the split
        assert line["trace_id"] == TRACE_ID and len(str(line["span_id"])) == 16
        assert "secret detail" in str(line["exc"])
