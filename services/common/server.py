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
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tls
from services.common.config import ServerSettings
from services.common.health import Readiness
from services.common.interceptors import CallContext, Chain, Decode, Drain, Errors, Metrics

log = logging.getLogger(__name__)

MAIN_LISTENER = ""  # the listener on LISTEN_ADDR
_HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def install_blocking_pool(threads: int) -> None:
    """Bounds asyncio.to_thread (BLOCKING_THREADS). Calls to a dependency that can hang do not
    belong here, where one hung dependency would take the threads of all: job_service runs SQL
    and S3 in bulkheads of their own (services.common.bulkhead) and leaves this pool to CPU work
    such as decoding images; the worker and the notifier still use it for theirs."""
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


@dataclass
class _Listener:
    """One grpc.aio server on one address, and the services it serves (besides health)."""

    server: grpc.aio.Server
    addr: str
    service_names: list[str] = field(default_factory=list)
    port: int = 0


_MAX_STREAMS_PER_CONNECTION = 100_000
_MAX_PENDING_CALLS = 20_000


class ServiceHost:
    """grpc.aio servers with health and reflection; add services, then `run`.

    One listener (LISTEN_ADDR) unless `add_listener` adds more: each is a server of its own, so a
    service added to one is not served on another at all (UNIMPLEMENTED there), which lets
    NetworkPolicies tell its callers apart by port. grpc.aio routes by method only, so a second
    server is the clean way to do that. Every listener gets the same interceptors, TLS settings,
    health service (one readiness for the process) and its own reflection."""

    def __init__(
        self, name: str, settings: ServerSettings, *, maximum_concurrent_rpcs: int | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        # Calls beyond it are answered RESOURCE_EXHAUSTED before their message is read: with the
        # message limit, it bounds the memory unauthenticated callers can take. None: no cap
        # (the notifier holds thousands of long watch streams).
        self._maximum_concurrent_rpcs = maximum_concurrent_rpcs
        # With a cap, HTTP/2 windows also stay at their initial 64 KiB per stream until a handler
        # reads its message: BDP probing lets calls not taken yet buffer whole messages (measured
        # on a bare server capped at 64: 400 parallel 2 MiB calls, ~950 MiB with it, ~530 without).
        # Without a cap (the notifier), many long streams share few connections: gRPC's default
        # limit of concurrent streams per connection cancelled watches past 1,000-2,000.
        self._transport_options: list[tuple[str, Any]] = (
            [("grpc.http2.bdp_probe", 0)]
            if maximum_concurrent_rpcs
            else [
                ("grpc.max_concurrent_streams", _MAX_STREAMS_PER_CONNECTION),
                # Calls not yet picked up by the application: past 1,000 (hard limit 3,000) gRPC
                # cancels new ones, which a burst of watchers reconnecting at once exceeds.
                ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING_CALLS),
            ]
        )
        self._gate = Drain()  # shared: one drain covers every listener
        self.health = health.aio.HealthServicer()
        self._listeners: dict[str, _Listener] = {}
        self.server = self._new_listener(MAIN_LISTENER, settings.listen_addr).server
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

    def _new_listener(self, name: str, addr: str) -> _Listener:
        server = grpc.aio.server(
            interceptors=_interceptors(self._gate),
            maximum_concurrent_rpcs=self._maximum_concurrent_rpcs,
            options=[
                *channel_options(self.settings.max_message_bytes),
                # Recycle long-lived HTTP/2 connections so clients rebalance across replicas.
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                ("grpc.max_connection_age_grace_ms", 30 * 1000),
                *self._transport_options,
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        listener = _Listener(server, addr)
        self._listeners[name] = listener
        return listener

    def add_listener(self, name: str, addr: str) -> None:
        """Another address, serving only what `add(..., listener=name)` puts on it (plus health
        and reflection)."""
        if name in self._listeners:
            raise ValueError(f"listener {name!r} exists already")
        self._new_listener(name, addr)

    def add(
        self,
        full_name: str,
        register: Callable[[Any, grpc.aio.Server], None],
        servicer: Any,
        *,
        listener: str = MAIN_LISTENER,
    ) -> None:
        """Serves `servicer` on one listener: the main one (LISTEN_ADDR) unless named."""
        target = self._listeners[listener]
        register(servicer, target.server)
        target.service_names.append(full_name)

    def port_of(self, listener: str) -> int:
        """The port a started listener is bound to (0 before `start`)."""
        return self._listeners[listener].port

    @property
    def _service_names(self) -> list[str]:
        """Every service served on any listener: the health names readiness sets."""
        return [_HEALTH_NAME, *(n for lis in self._listeners.values() for n in lis.service_names)]

    async def start(self) -> int:
        for listener in self._listeners.values():
            # Reflection lists what this listener serves, not what the process serves.
            reflection.enable_server_reflection(
                [_HEALTH_NAME, *listener.service_names, reflection.SERVICE_NAME], listener.server
            )
            # TLS (mutual with TLS_CLIENT_CA_FILE) when certificates are configured: the same
            # on every listener.
            listener.port = tls.add_port(listener.server, listener.addr, self.settings.tls)
            await listener.server.start()
        self.port = self._listeners[MAIN_LISTENER].port
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
                **{
                    f"{name}_port": lis.port
                    for name, lis in self._listeners.items()
                    if name != MAIN_LISTENER
                },
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
        grace = self.settings.shutdown_grace_seconds
        await asyncio.gather(*(lis.server.stop(grace) for lis in self._listeners.values()))
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
