"""The gRPC server every service runs: error mapping, health checking, reflection, a bounded
pool for blocking calls, and graceful shutdown on SIGTERM/SIGINT."""

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

from services.common.auth import AuthError
from services.common.config import ServerSettings
from services.common.errors import RpcError

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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns RpcError and AuthError into statuses, and anything unexpected into INTERNAL
    without leaking its text to the caller."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except Exception as exc:
                    await _abort(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for response in inner_us(request, context):
                        yield response
                except Exception as exc:
                    await _abort(exc, context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, RpcError):
        await context.abort_with_status(exc.to_status())
    if isinstance(exc, AuthError):
        await context.abort(exc.code, exc.message)
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    # context.abort raises an exception of grpc's own; let it through untouched.
    if type(exc).__module__.startswith("grpc"):
        raise exc
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ServiceHost:
    """One grpc.aio server with health and reflection; add services, then `run`."""

    def __init__(self, name: str, settings: ServerSettings) -> None:
        self.name = name
        self.settings = settings
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
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

    def add(
        self, full_name: str, register: Callable[[Any, grpc.aio.Server], None], servicer: Any
    ) -> None:
        register(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(self.settings.listen_addr)
        await self.server.start()
        # Liveness has its own name: readiness ("" and each service) goes NOT_SERVING while a
        # dependency is down or during shutdown, which must not make Kubernetes restart the pod.
        await self.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(True)
        log.info(
            "%s listening", self.name, extra={"addr": self.settings.listen_addr, "port": self.port}
        )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        # Readiness goes false first so load balancers stop sending new calls.
        await self.set_serving(False)
        await self.server.stop(self.settings.shutdown_grace_seconds)


async def wait_for_signal() -> None:
    """Returns on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received, shutting down")
