"""What an operator sees from outside: Prometheus metrics that move with the work, one trace ID
across every service's log lines for a job, and readiness that follows the dependencies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.deps import Dependencies, NatsServer
from devstack.services import Services, start_services
from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common.auth import bearer_metadata, mint_token
from tests.conftest import workers_paused
from tests.e2e.helpers import WAIT_SECONDS, create, wait_terminal
from tests.servers import own_dependencies

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(addr: str) -> Samples:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_all(stack: Services) -> dict[str, Samples]:
    addrs = stack.metrics_addrs
    results = await asyncio.gather(*(asyncio.to_thread(scrape, a) for a in addrs.values()))
    return dict(zip(addrs, results, strict=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(probe: Callable[[], object], what: str) -> None:
    """Polls an async or sync probe until it is truthy; the deadline only guards against hangs."""

    async def loop() -> None:
        while True:
            result = probe()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(loop(), WAIT_SECONDS)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def test_metrics_move_with_a_job(clients, stack) -> None:
    worker = stack.workers[0].name
    before = await scrape_all(stack)
    with workers_paused(stack):
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="metrics", size="256x256")
        )
        # A watch held open while the job cannot move: the notifier counts it.
        call = clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=clients.alice
        )
        first = await asyncio.wait_for(call.read(), WAIT_SECONDS)
        assert first.job.status == job_pb2.JOB_STATUS_QUEUED
        during = await asyncio.to_thread(scrape, stack.metrics_addrs["notifier"])
        assert value(during, "media_active_watch_streams") >= 1
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED
    call.cancel()
    after = await scrape_all(stack)

    def grew(process: str, name: str, **labels: str) -> None:
        old, new = value(before[process], name, **labels), value(after[process], name, **labels)
        assert new > old, (process, name, labels, old, new)

    js = "job_service"
    grew(
        js, "media_rpc_requests_total", service="media.v1.JobService", method="CreateJob", code="OK"
    )
    grew(js, "media_rpc_latency_seconds_count", service="media.v1.JobService", method="CreateJob")
    for method in ("ClaimJob", "CompleteJob"):
        grew(
            js,
            "media_rpc_requests_total",
            service="media.v1.WorkerService",
            method=method,
            code="OK",
        )
    grew(js, "media_jobs_created_total", kind="image")
    grew(js, "media_jobs_completed_total", kind="image", status="succeeded")
    grew(worker, "media_generation_seconds_count", kind="image", model="local")
    grew(worker, "media_upload_bytes_total", kind="image")
    grew(
        "notifier",
        "media_rpc_requests_total",
        service="media.v1.NotifierService",
        method="WatchJob",
        code="OK",
    )
    # Health checks are not counted.
    assert not any(
        name.startswith("media_rpc") and ("service", "grpc.health.v1.Health") in labels
        for name, labels in after[js]
    )

    # The sampler's gauges (read every few seconds; the consumer appears once a worker made it).
    def sampled() -> bool:
        now = scrape(stack.metrics_addrs[js])
        gauges = [
            ("media_queue_depth", {"kind": "image"}),
            ("media_job_oldest_age_seconds", {"kind": "video", "status": "running"}),
            ("media_consumer_pending_messages", {"kind": "image"}),
            ("media_outbox_pending", {}),
            ("media_outbox_lag_seconds", {}),
        ]
        return all((name, frozenset(labels.items())) in now for name, labels in gauges)

    await eventually(lambda: asyncio.to_thread(sampled), "job_service samples its gauges")


def log_lines(path: Path) -> Iterator[dict[str, object]]:
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                yield json.loads(raw)
            except ValueError:
                continue


async def test_one_trace_id_across_every_service_for_a_job(clients, stack) -> None:
    trace_id = os.urandom(16).hex()
    traceparent = f"00-{trace_id}-{os.urandom(8).hex()}-01"
    job = await create(
        clients,
        (*clients.alice, ("traceparent", traceparent)),
        image=job_pb2.ImageParams(prompt="traced", size="256x256"),
    )
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED
    processes = {"job_service": [stack.job_service], "notifier": [stack.notifier]}
    processes["media_worker"] = list(stack.workers)

    def traced(service: str) -> list[dict[str, object]]:
        return [
            line
            for proc in processes[service]
            for line in log_lines(proc.log_path)
            if line.get("trace_id") == trace_id
        ]

    def every_service_logged() -> bool:
        return all(traced(service) for service in processes)

    await eventually(every_service_logged, "every service logs a line with the trace ID")
    for service in processes:
        lines = traced(service)
        # Every traced line here is about this job, and says so.
        assert all(line.get("job_id") == job.id for line in lines), (service, lines)
        assert all(len(str(line.get("span_id", ""))) == 16 for line in lines), lines
    messages = {line["msg"] for line in traced("media_worker")}
    assert "job claimed" in messages, messages
    assert any(m.startswith("job completed") for m in messages), messages


# --- a small stack of its own: traces exported to a collector, then readiness without NATS ----


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: (service.name, span) for every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class OwnStack:
    services: Services
    deps: Dependencies
    collector: Collector
    secret: str


@pytest_asyncio.fixture(scope="module")
async def own_stack(
    deps: Dependencies, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OwnStack]:
    """Its own NATS (which a test stops) and database, the shared S3 with another bucket, and
    tracing exported to an in-test collector. The shared stack is left alone."""
    root = tmp_path_factory.mktemp("own-stack")
    (root / "logs").mkdir()
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    nats = NatsServer(root / "nats", root / "logs")
    services = None
    try:
        own, env = await own_dependencies(deps, nats, "own")
        env |= {
            "S3_BUCKET": "media-own-stack",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the collector soon
            "READINESS_CHECK_SECONDS": "0.5",  # only makes the test quicker
        }
        services = await asyncio.to_thread(
            start_services, root / "run", own, secret, workers=1, extra_env=env
        )
        yield OwnStack(services, own, collector, secret)
    finally:
        if services is not None:
            await asyncio.to_thread(services.stop, 10)
        await asyncio.to_thread(nats.stop)
        await receiver.stop(0)


async def test_one_trace_shows_the_whole_path(own_stack: OwnStack) -> None:
    services = own_stack.services
    alice = bearer_metadata(mint_token(own_stack.secret, "alice"))
    async with (
        grpc.aio.insecure_channel(services.job_service_addr) as jobs_channel,
        grpc.aio.insecure_channel(services.notifier_addr) as notifier_channel,
    ):
        stub = job_service_pb2_grpc.JobServiceStub(jobs_channel)
        job = (
            await stub.CreateJob(
                job_service_pb2.CreateJobRequest(
                    image=job_pb2.ImageParams(prompt="traced", size="256x256")
                ),
                metadata=alice,
            )
        ).job
        watch = notifier_service_pb2_grpc.NotifierServiceStub(notifier_channel).WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=alice
        )
        final = await asyncio.wait_for(_last(watch), WAIT_SECONDS)
    assert final.job.status == job_pb2.JOB_STATUS_SUCCEEDED

    def job_trace() -> set[tuple[str, str]]:
        roots = [
            span
            for service, span in own_stack.collector.spans
            if service == "job_service" and span.name == "media.v1.JobService/CreateJob"
        ]
        if not roots:
            return set()
        trace_id = roots[-1].trace_id
        return {
            (svc, span.name) for svc, span in own_stack.collector.spans if span.trace_id == trace_id
        }

    expected = {
        ("job_service", "media.v1.JobService/CreateJob"),
        ("job_service", "publish media.dispatch"),
        ("media_worker", "process media.dispatch.image"),
        ("media_worker", "media.v1.WorkerService/ClaimJob"),
        ("job_service", "media.v1.WorkerService/ClaimJob"),
        ("media_worker", "generate"),
        ("media_worker", "upload"),
        ("media_worker", "media.v1.WorkerService/CompleteJob"),
        ("job_service", "media.v1.WorkerService/CompleteJob"),
        ("notifier", "notify watchers"),
    }
    await eventually(lambda: expected <= job_trace(), "every step of the job in one trace")
    # Readiness probes of job_service are not traced.
    assert not any(span.name.startswith("grpc.") for _, span in own_stack.collector.spans)


async def _last(call: Any) -> Any:
    last = None
    async for message in call:
        last = message
    return last


async def health_status(addr: str, service: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.aio.AioRpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN
        return int(reply.status)


async def test_readiness_follows_nats_and_liveness_stays(own_stack: OwnStack) -> None:
    addrs = [p.addr for p in own_stack.services.procs]
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    async def statuses(service: str) -> set[int]:
        return set(await asyncio.gather(*(health_status(a, service) for a in addrs)))

    async def readiness_is(status: int) -> bool:
        assert await statuses("liveness") == {serving}  # throughout
        return await statuses("") == {status}

    assert await readiness_is(serving)
    await asyncio.to_thread(own_stack.deps.stop_nats)
    await eventually(lambda: readiness_is(not_serving), "NOT_SERVING without NATS")
    await asyncio.to_thread(own_stack.deps.start_nats)
    await eventually(lambda: readiness_is(serving), "SERVING again once NATS is back")


async def test_job_service_counts_the_events_the_webhook_sender_has_not_read(
    clients, stack
) -> None:
    # Read by job_service, so it shows exactly when no sender reads: here, one frozen.
    sender = stack.webhooks
    assert sender is not None and sender.pid is not None
    job_service = stack.metrics_addrs["job_service"]

    def pending() -> float:
        return scrape(job_service).get(("media_webhook_events_pending", frozenset()), -1.0)

    os.kill(sender.pid, signal.SIGSTOP)
    try:
        job = await create(
            clients, clients.alice, image=job_pb2.ImageParams(prompt="unread", size="256x256")
        )
        await eventually(
            lambda: asyncio.to_thread(lambda: pending() >= 1), "the sender's backlog is counted"
        )
    finally:
        os.kill(sender.pid, signal.SIGCONT)
    await wait_terminal(clients, clients.alice, job.id)
    await eventually(lambda: asyncio.to_thread(lambda: pending() == 0), "the sender catches up")
