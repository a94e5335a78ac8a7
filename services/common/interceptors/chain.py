"""What every concern of the server chain shares: one shape of call for unary and streaming
handlers, and the grpc interceptor that builds each method's wrappers once.

As in the Temporal SDK's interceptor chains, each concern is an `Interceptor` with one job, and
the chain composes them, outermost first, once per method; the result is cached, so a call
allocates nothing here but its own state. Health checks and reflection (grpc.*) are passed
through untouched.

A handler of either kind becomes one `Call`, a coroutine of (request, context): a unary handler
already is one, and a server-streaming handler's async generator is driven by a coroutine that
writes each response to the context (gRPC's own reader/writer form). So each concern wraps one
coroutine and is written once for both kinds, and a stream's whole life (its span, its log
context, the closing of its generator) stays inside that coroutine, in the call's own task,
even when the call is cancelled.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import Message

# The chain never looks inside a request: a message, or a stand-in from a deserializer (see
# decode.py). A concern that reads one narrows it.
Request: TypeAlias = object
Response: TypeAlias = Message
Context: TypeAlias = grpc.aio.ServicerContext[Request, Response]
# A response for a unary call; None for a stream, whose responses went out through the context.
Result: TypeAlias = Response | None
Call: TypeAlias = Callable[[Request, Context], Awaitable[Result]]
Deserializer: TypeAlias = Callable[[bytes], Request]
# A handler of any method: its messages differ from method to method, hence Any, as in grpc's
# own GenericRpcHandler.service. Quoted: RpcMethodHandler is generic only in grpc's type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
_Stream: TypeAlias = Callable[[Request, Context], AsyncGenerator[Response, None]]


@dataclass(frozen=True, slots=True)
class Method:
    """What the concerns know of a method, worked out once from its handler as registered."""

    path: str  # as gRPC names it: /media.v1.JobService/GetJob
    service: str  # media.v1.JobService
    name: str  # GetJob
    streaming: bool  # server streaming
    request_type: type[Message] | None  # None when the deserializer is no message's FromString

    @property
    def full_name(self) -> str:
        """media.v1.JobService/GetJob: the span name."""
        return self.path.lstrip("/")

    def request_has(self, field: str) -> bool:
        if self.request_type is None:
            return False
        return field in self.request_type.DESCRIPTOR.fields_by_name

    @classmethod
    def of(cls, path: str, handler: Handler) -> Method:
        service, _, name = path.lstrip("/").rpartition("/")
        # Generated code registers the request class's FromString, bound to the class.
        owner = getattr(handler.request_deserializer, "__self__", None)
        request_type = owner if isinstance(owner, type) and issubclass(owner, Message) else None
        return cls(path, service, name, handler.unary_stream is not None, request_type)


class Interceptor:
    """One concern of the chain. Both hooks run once per method, when its wrapper is built; the
    defaults leave the method as it is."""

    def intercept(self, method: Method, call: Call) -> Call:
        """The call with this concern around it."""
        return call

    def deserializer(self, method: Method, deserialize: Deserializer) -> Deserializer:
        """How the request is parsed (before any call, by gRPC)."""
        return deserialize


class Chain(grpc.aio.ServerInterceptor):
    """The concerns, outermost first, as one grpc interceptor."""

    def __init__(self, *interceptors: Interceptor) -> None:
        self._interceptors = interceptors
        # method -> (the handler as registered, our wrapper of it)
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        path: str = details.method
        cached = self._cache.get(path)
        # Keyed on the handler too, in case another interceptor returns a different one.
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(path, handler)
        self._cache[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, path: str, handler: Handler) -> Handler:
        if path.startswith("/grpc."):
            return handler
        call = _call_of(handler)
        if call is None:  # client streaming: no such method here, so left as it is
            return handler
        method = Method.of(path, handler)
        deserialize: Deserializer | None = handler.request_deserializer
        for interceptor in reversed(self._interceptors):
            call = interceptor.intercept(method, call)
            if deserialize is not None:
                deserialize = interceptor.deserializer(method, deserialize)
        build = (
            grpc.unary_stream_rpc_method_handler
            if method.streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return build(
            call,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )


def _call_of(handler: Handler) -> Call | None:
    if handler.unary_unary is not None:
        return cast(Call, handler.unary_unary)
    if handler.unary_stream is not None:
        if inspect.isasyncgenfunction(handler.unary_stream):
            return _driven(cast(_Stream, handler.unary_stream))
        return cast(Call, handler.unary_stream)  # already in the reader/writer form
    return None


def _driven(stream: _Stream) -> Call:
    """The stream as a coroutine that writes its responses. gRPC would otherwise drive the
    generator itself and, when the call is cancelled while it waits to send, abandon it to the
    garbage collector, which closes it later in another task: the span's context then fails to
    detach there, and the handler's own cleanup runs late and outside the call's context."""

    async def drive(request: Request, context: Context) -> None:
        async with aclosing(stream(request, context)) as responses:
            async for response in responses:
                try:
                    await context.write(response)
                except grpc.aio.BaseError:
                    # The call ended under the handler (the peer went away, the server
                    # stopped): it counts as CANCELLED, as when gRPC wrote for the generator.
                    if code_set(context) is None:
                        context.set_code(grpc.StatusCode.CANCELLED)
                    raise

    return drive


def code_set(context: Context) -> grpc.StatusCode | None:
    """The status the call will end with, if one was set (abort, set_code). grpc's type stubs
    say there always is one; until set, it is None."""
    return cast("grpc.StatusCode | None", context.code())
