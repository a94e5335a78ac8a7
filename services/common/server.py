"""The gRPC server every service runs: its interceptors (services.common.interceptors: refusal
while draining, metrics, tracing and log context, error mapping, tolerant decoding), health
checking with readiness from dependency checks (health.py), reflection, a bounded pool for
blocking calls, and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tls
from services.common.config import ServerSettings
from services.common.health import Readiness
from services.common.interceptors import CallContext, Chain, Decode, Drain, Errors, Metrics

log = logging.getLogger(__name__)


def install_blocking_pool(threads: int) -> None:
    """Bounds asyncio.to_thread: every blocking call (SQL, S3) shares this pool."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="block"))


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _interceptors(gate: Drain) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first. The drain gate leads, so that a refused call reaches nothing else (not
    parsed, counted or traced). Metrics wrap the rest, so they time all of it. The call context
    (span, job_id) encloses error mapping, so that the line logged for an unexpected error
    carries the trace, span and job IDs, and the span sees the status it ended with. Decoding
    comes last, inside error mapping: a request that does not parse is refused like any other
    invalid one, counted and traced as INVALID_ARGUMENT."""
    return [gate, Chain(Metrics(), CallContext(), Errors(), Decode())]


class ServiceHost:
    """One grpc.aio server with health and reflection; add services, then `run`."""

    def __init__(self, name: str, settings: ServerSettings) -> None:
        self.name = name
        self.settings = settings
        self._gate = Drain()
        self.server = grpc.aio.server(
            interceptors=_interceptors(self._gate),
            options=[
                *channel_options(settings.max_message_bytes),
                # Recycle long-lived HTTP/2 connections so clients rebalance across replicas.
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                ("grpc.max_connection_age_grace_ms", 30 * 1000),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        ]
        self.port = 0
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        # Readiness ("" and each service) follows the checks services add with add_check.
        self.readiness = Readiness(
            self._apply_serving, interval_seconds=settings.readiness_check_seconds
        )

    def add_check(self, name: str, check: Callable[[], Awaitable[bool]]) -> None:
        """A dependency the server is not ready without; see services.common.health."""
        self.readiness.add_check(name, check)

    def add(
        self, full_name: str, register: Callable[[Any, grpc.aio.Server], None], servicer: Any
    ) -> None:
        register(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME], self.server
        )
        # TLS (mutual with TLS_CLIENT_CA_FILE) when certificates are configured.
        self.port = tls.add_port(self.server, self.settings.listen_addr, self.settings.tls)
        await self.server.start()
        if self.settings.health_listen_addr:
            # Kubernetes' native gRPC probes cannot speak TLS: they get the health service
            # alone, in plaintext, on a port of its own (HEALTH_LISTEN_ADDR).
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(
                self.settings.health_listen_addr
            )
            await self._health_server.start()
        # Liveness has its own name: readiness ("" and each service) goes NOT_SERVING while a
        # dependency is down or during shutdown, which must not make Kubernetes restart the pod.
        await self.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        await self.readiness.start()
        log.info(
            "%s listening",
            self.name,
            extra={
                "addr": self.settings.listen_addr,
                "port": self.port,
                "tls": self.settings.tls.server_enabled,
                "mtls": bool(self.settings.tls.client_ca_file),
                "health_port": self.health_port or None,
            },
        )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """The service's own say on readiness (False while starting or draining); the server is
        ready when this is True and every dependency check passes."""
        await self.readiness.set_gate(serving)

    async def _apply_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        # Readiness goes false first so load balancers stop sending new calls.
        await self.readiness.stop()
        await self._drain()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        if self._health_server is not None:  # answered probes until the end
            await self._health_server.stop(None)

    async def _drain(self) -> None:
        """Answers new calls UNAVAILABLE until none has come for a moment (at most
        SHUTDOWN_DRAIN_SECONDS). Calls gRPC had already accepted are handed over meanwhile and
        told to retry, instead of being CANCELLED by the stop; calls in flight go on."""
        self._gate.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_drain_seconds
        seen = -1
        while loop.time() < deadline and self._gate.refused != seen:
            seen = self._gate.refused
            await asyncio.sleep(0.1)
        if self._gate.refused:
            log.info("refused %d call(s) while draining", self._gate.refused)


async def wait_for_signal() -> None:
    """Returns on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received, shutting down")
