"""The server interceptor every service runs. Per call it:

- turns RpcError and AuthError into statuses, and anything unexpected into INTERNAL without
  leaking its text to the caller;
- counts the call by service, method and code and times it (media_rpc_*; streams are counted
  when they close and not timed);
- continues the caller's trace (W3C traceparent in the metadata) in a SERVER span;
- binds the request's job_id, when it has one, to every log line written during the call.

The wrapped handler is built once per method and cached, so a call allocates nothing here but
its own state. Health checks and reflection (grpc.*) are passed through untouched.

While the server drains before it stops (`draining`), every other call is answered UNAVAILABLE
at once: gRPC hands over the calls it has already accepted, which would otherwise come back
CANCELLED when the server stops, and clients retry UNAVAILABLE elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from services.common import logs, tracing
from services.common.auth import AuthError
from services.common.errors import RpcError
from services.common.metrics import RpcStats

log = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # method -> (the handler as registered, our wrapper of it)
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self.draining = False
        self.refused = 0  # calls answered UNAVAILABLE while draining

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if self.draining and not method.startswith("/grpc."):
            if handler.unary_unary:
                self.refused += 1
                return _REFUSE_UNARY
            if handler.unary_stream:
                self.refused += 1
                return _REFUSE_STREAM
        cached = self._cache.get(method)
        # Keyed on the handler too, in case another interceptor returns a different one.
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped


async def _refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
    )


# No deserializer: the request is not even parsed.
_REFUSE_UNARY = grpc.unary_unary_rpc_method_handler(_refuse)
_REFUSE_STREAM = grpc.unary_stream_rpc_method_handler(_refuse)


def wrap_handler(full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    service, _, method = full_method.lstrip("/").rpartition("/")
    if service.startswith("grpc."):
        return handler
    if handler.unary_unary:
        return _wrap_unary_unary(full_method, service, method, handler)
    if handler.unary_stream:
        return _wrap_unary_stream(full_method, service, method, handler)
    return handler


def _wrap_unary_unary(
    full_method: str, service: str, method: str, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    inner = _decoded_unary(handler.unary_unary)
    stats = RpcStats(service, method, timed=True)
    job_field = _has_job_id(handler)
    span_name = full_method.lstrip("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        job_token = logs.bind_job_id(request.job_id) if job_field else None
        parent = tracing.context_from_metadata(context.invocation_metadata())
        try:
            if parent is None and not tracing.enabled():
                # The common case with tracing off: no span, not even a no-op one.
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    code = _code_of(exc, context)
                    await _abort(exc, context, full_method)
            with tracing.span(
                span_name,
                parent=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_errors=False,
            ) as current:
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    code = _code_of(exc, context)
                    _record(current, code, exc)
                    await _abort(exc, context, full_method)
        finally:
            if code is grpc.StatusCode.OK:
                code = context.code() or code
            stats.done(code, time.perf_counter() - started)
            logs.unbind_job_id(job_token)

    return grpc.unary_unary_rpc_method_handler(
        unary_unary,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _wrap_unary_stream(
    full_method: str, service: str, method: str, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    inner = _decoded_stream(handler.unary_stream)
    stats = RpcStats(service, method, timed=False)
    job_field = _has_job_id(handler)
    span_name = full_method.lstrip("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        code = grpc.StatusCode.OK
        job_token = logs.bind_job_id(request.job_id) if job_field else None
        parent = tracing.context_from_metadata(context.invocation_metadata())
        try:
            with tracing.span(
                span_name,
                parent=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_errors=False,
            ) as current:
                try:
                    async for response in inner(request, context):
                        yield response
                except BaseException as exc:
                    code = _code_of(exc, context)
                    _record(current, code, exc)
                    await _abort(exc, context, full_method)
        finally:
            if code is grpc.StatusCode.OK:
                code = context.code() or code
            stats.done(code, 0.0)
            logs.unbind_job_id(job_token)

    return grpc.unary_stream_rpc_method_handler(
        unary_stream,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _has_job_id(handler: grpc.RpcMethodHandler) -> bool:
    """Whether the method's request message has a job_id field (from its deserializer, which is
    the message class's FromString)."""
    message = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(message, "DESCRIPTOR", None)
    return descriptor is not None and "job_id" in descriptor.fields_by_name


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, RpcError | AuthError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if type(exc).__module__.startswith("grpc"):  # the handler aborted itself
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


def _record(current: Any, code: grpc.StatusCode, exc: BaseException) -> None:
    current.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in tracing.SERVER_ERRORS:
        tracing.set_error(current, code.name)
        if code is grpc.StatusCode.INTERNAL:
            current.record_exception(exc)


async def _abort(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    """Always raises: the status for `exc`, or `exc` itself when grpc must see it."""
    if isinstance(exc, RpcError):
        await context.abort_with_status(exc.to_status())
    if isinstance(exc, AuthError):
        await context.abort(exc.code, exc.message)
    if not isinstance(exc, Exception):  # CancelledError, GeneratorExit, ...
        raise exc
    # context.abort raises an exception of grpc's own; let it through untouched.
    if type(exc).__module__.startswith("grpc"):
        raise exc
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class _Undecodable:
    """Stands in for a request body that does not parse (corrupt wire format, invalid UTF-8 in
    a string field): grpc would answer UNKNOWN with the parser's exception; the handler wrappers
    below answer INVALID_ARGUMENT instead."""

    job_id = ""  # read by the log binding above

    def __init__(self, error: RpcError) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            return _Undecodable(
                RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {exc}")
            )

    return deserialize


def _decoded_unary(inner: Any) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            raise request.error
        return await inner(request, context)

    return call


def _decoded_stream(inner: Any) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            raise request.error
        async for response in inner(request, context):
            yield response

    return call
