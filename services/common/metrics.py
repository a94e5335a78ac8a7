"""Prometheus metrics: the `/metrics` endpoint every service serves on its own port, and the RPC
metrics the server interceptor records.

deploy/prometheus/metrics.yaml is the contract for names, types and labels. Metrics that belong to
one service are defined next to it (services/*/metrics.py), so that a process exports only its
own names: an unlabelled gauge defined here would appear, as 0, in every service.
"""

from __future__ import annotations

import logging

import grpc
import prometheus_client
from prometheus_client import Counter, Histogram

from services.common.config import MetricsSettings

log = logging.getLogger(__name__)

# `_created` series double the number of series and nothing reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Up to the 2 s of MediaRpcLatencyHigh and beyond; CreateJob answers in milliseconds.
RPC_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)

RPC_REQUESTS = Counter(
    "media_rpc_requests_total",
    "RPCs handled, counted when the call ends (a stream when it closes).",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "media_rpc_latency_seconds",
    "Time from a call's start to its end; WatchJob streams are excluded.",
    ["service", "method"],
    buckets=RPC_LATENCY_BUCKETS,
)


class RpcStats:
    """The series of one method, resolved once: a call then costs a dict lookup, an increment
    and (for unary calls) one observation."""

    def __init__(self, service: str, method: str, *, timed: bool) -> None:
        self._service = service
        self._method = method
        self._latency = RPC_LATENCY.labels(service, method) if timed else None
        self._counts: dict[grpc.StatusCode, prometheus_client.metrics.Counter] = {}

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._counts.get(code)
        if counter is None:
            counter = self._counts[code] = RPC_REQUESTS.labels(
                self._service, self._method, code.name
            )
        counter.inc()
        if self._latency is not None:
            self._latency.observe(seconds)


def serve_metrics(settings: MetricsSettings) -> int:
    """Starts the `/metrics` HTTP endpoint in a daemon thread (so it answers even while the event
    loop is busy); returns its port, or 0 when METRICS_PORT is 0."""
    if settings.port == 0:
        log.info("metrics endpoint disabled (METRICS_PORT=0)")
        return 0
    server, _thread = prometheus_client.start_http_server(settings.port, settings.addr)
    port = int(server.server_port)
    log.info("metrics endpoint listening", extra={"addr": settings.addr, "port": port})
    return port
