"""Requests that do not parse (corrupt wire format, invalid UTF-8 in a string field) answered
INVALID_ARGUMENT: left to grpc, the parser's exception would come back as UNKNOWN, with its
text."""

from __future__ import annotations

import grpc

from services.common.errors import RpcError
from services.common.interceptors.chain import (
    Call,
    Context,
    Deserializer,
    Interceptor,
    Method,
    Request,
    Result,
)


class Undecodable:
    """Stands in for a request body that does not parse, until the call can refuse it."""

    __slots__ = ("error",)

    def __init__(self, error: RpcError) -> None:
        self.error = error


class Decode(Interceptor):
    def deserializer(self, method: Method, deserialize: Deserializer) -> Deserializer:
        def tolerant(raw: bytes) -> Request:
            try:
                return deserialize(raw)
            except Exception as exc:
                # gRPC parses before any call starts: the refusal waits for the call.
                return Undecodable(
                    RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {exc}")
                )

        return tolerant

    def intercept(self, method: Method, call: Call) -> Call:
        async def decoded(request: Request, context: Context) -> Result:
            if isinstance(request, Undecodable):
                raise request.error
            return await call(request, context)

        return decoded
