"""The context a call runs in: the caller's trace (W3C traceparent in the metadata) continued
in a SERVER span, and the request's job_id, when it has one, bound to every log line written
during the call."""

from __future__ import annotations

import grpc
from opentelemetry.trace import Span, SpanKind

from services.common import logs, tracing
from services.common.interceptors.chain import Call, Context, Interceptor, Method, Request, Result
from services.common.interceptors.errors import code_of, code_returned


class CallContext(Interceptor):
    def intercept(self, method: Method, call: Call) -> Call:
        job_field = method.request_has("job_id")
        name = method.full_name
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.name,
        }

        async def in_context(request: Request, context: Context) -> Result:
            token = logs.bind_job_id(_job_id(request)) if job_field else None
            try:
                parent = tracing.context_from_metadata(context.invocation_metadata())
                if parent is None and not tracing.enabled():
                    # The common case with tracing off: no span, not even a no-op one.
                    return await call(request, context)
                with tracing.span(
                    name,
                    parent=parent,
                    kind=SpanKind.SERVER,
                    attributes=attributes,
                    record_errors=False,  # set from the status below instead
                ) as current:
                    try:
                        result = await call(request, context)
                    except BaseException as exc:
                        _record(current, code_of(exc, context), exc)
                        raise
                    code = code_returned(context)
                    if code is not grpc.StatusCode.OK:  # a refusal ends with its status set
                        _record(current, code, None)
                    return result
            finally:
                logs.unbind_job_id(token)

        return in_context


def _job_id(request: Request) -> str:
    job_id = getattr(request, "job_id", "")  # "" for a request that did not parse
    return job_id if isinstance(job_id, str) else ""


def _record(current: Span, code: grpc.StatusCode, exc: BaseException | None) -> None:
    current.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in tracing.SERVER_ERRORS:
        tracing.set_error(current, code.name)
        if code is grpc.StatusCode.INTERNAL and exc is not None:
            # The failure itself, which Errors chained to the abort it answered with.
            current.record_exception(exc.__cause__ or exc)
