"""Refusal while the server drains before it stops: every call but grpc.* (health, reflection)
is answered UNAVAILABLE at once, its request not even parsed. gRPC hands over the calls it has
already accepted, which would otherwise come back CANCELLED when the server stops, and clients
retry UNAVAILABLE elsewhere.

A grpc interceptor of its own, decided per call rather than built once per method, and put
first: a refused call reaches none of the other concerns (it is counted only in `refused`)."""

from __future__ import annotations

import grpc

from services.common.interceptors.chain import Context, Continuation, Handler


class Drain(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.draining = False
        self.refused = 0  # calls answered UNAVAILABLE while draining

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not self.draining or details.method.startswith("/grpc."):
            return handler
        if handler.unary_unary:
            refusal = _REFUSE_UNARY
        elif handler.unary_stream:
            refusal = _REFUSE_STREAM
        else:
            return handler
        self.refused += 1
        return refusal


async def _refuse(request: bytes, context: Context) -> None:
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
    )


# No deserializer: the request is not even parsed.
_REFUSE_UNARY: Handler = grpc.unary_unary_rpc_method_handler(_refuse)
_REFUSE_STREAM: Handler = grpc.unary_stream_rpc_method_handler(_refuse)
