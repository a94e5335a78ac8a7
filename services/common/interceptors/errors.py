"""Failures as statuses: RpcError and AuthError become theirs, anything unexpected becomes
INTERNAL without its text reaching the caller (it is logged instead). Also the status a call
ends with (`code_of` when it raised, `code_returned` when it returned), which the observing
concerns (metrics, spans) share."""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import grpc

from services.common.auth import AuthError
from services.common.errors import RpcError
from services.common.interceptors.chain import (
    Call,
    Context,
    Interceptor,
    Method,
    Request,
    Result,
    code_set,
)

# The name the "unhandled error" lines have always carried, which log queries may filter on.
log = logging.getLogger("services.common.interceptor")


class Errors(Interceptor):
    def intercept(self, method: Method, call: Call) -> Call:
        path = method.path

        async def mapped(request: Request, context: Context) -> Result:
            try:
                return await call(request, context)
            except (RpcError, AuthError) as exc:
                # An expected refusal ends the call with its status set rather than raised: an
                # abort keeps the request alive in a reference cycle (exception, traceback,
                # frames) until the cycle collector runs, and a flood of refused calls would
                # hold that much memory.
                _refuse(exc, context)
                return None
            except Exception as exc:
                if _grpc_own(exc):  # the handler aborted itself, or the call ended under it
                    raise
                await _abort(exc, context, path)

        return mapped


def code_of(exc: BaseException, context: Context) -> grpc.StatusCode:
    """The status of a call that `exc` ended, seen from outside `Errors` (which ends refusals
    with their status set rather than raised)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if _grpc_own(exc):  # an abort (the handler's or ours): the status is set
        return code_set(context) or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


def code_returned(context: Context) -> grpc.StatusCode:
    """The status of a call that returned: OK, unless the handler set another."""
    return code_set(context) or grpc.StatusCode.OK


def _grpc_own(exc: BaseException) -> bool:
    """An exception of grpc's own (context.abort raises one), which grpc must see untouched."""
    return type(exc).__module__.startswith("grpc")


def _refuse(exc: RpcError | AuthError, context: Context) -> None:
    if isinstance(exc, RpcError):
        status = exc.to_status()
        context.set_code(status.code)
        context.set_details(status.details)
        context.set_trailing_metadata(status.trailing_metadata)
    else:
        context.set_code(exc.code)
        context.set_details(exc.message)


async def _abort(exc: Exception, context: Context, path: str) -> NoReturn:
    try:
        log.error("unhandled error in %s", path, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    except grpc.aio.AbortError as aborted:
        # Chained, so that the concerns outside (the span) can tell what the status stands for.
        raise aborted from exc
