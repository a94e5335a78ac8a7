"""OpenTelemetry tracing: set-up, and carrying trace context across gRPC metadata and NATS headers.

Exporting is off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set.
Off, no SDK is installed and the API's no-op tracer is used: a "span" then costs next to nothing
and stands for its parent's span context, so a trace ID that came in with a call or a message is
still passed on (and logged) even though nothing is recorded. On, spans go through a
BatchSpanProcessor to the OTLP gRPC exporter, which reads the standard OTEL_EXPORTER_OTLP_* and
OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES / OTEL_TRACES_SAMPLER variables itself.

The W3C `traceparent` (and `tracestate`) go through the global propagator both ways.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeAlias, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common.config import TracingSettings

log = logging.getLogger(__name__)

tracer = trace.get_tracer("media-pipeline")
_enabled = False

# The keys the W3C propagator reads; a carrier without `traceparent` carries no context.
TRACEPARENT = "traceparent"


def setup_tracing(service: str, settings: TracingSettings) -> bool:
    """Installs the SDK with an OTLP exporter when an endpoint is configured; returns whether it
    did. Call once per process, before the first span."""
    global _enabled
    endpoint = settings.otlp_endpoint
    if not endpoint:
        return False
    # Imported only when exporting: the SDK and grpc exporter are not needed otherwise.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME, when set, overrides the name given here.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # its shutdown at exit flushes the last spans
    _enabled = True
    log.info("tracing exports to %s", endpoint)
    return True


def enabled() -> bool:
    return _enabled


def has_context() -> bool:
    """True inside a span (or a propagated parent): there is something to pass on."""
    return trace.get_current_span().get_span_context().is_valid


def ids() -> tuple[str, str] | None:
    """The current trace and span IDs in hex, for log lines; None outside any trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- carriers ------------------------------------------------------------------------------


def current_headers() -> dict[str, str] | None:
    """The current trace context as message headers (for NATS, or an outbox row); None when
    there is none, which is the common case with tracing off."""
    if not has_context():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a message carries; None when it carries none (then the current one stays)."""
    if not headers or TRACEPARENT not in headers:
        return None
    return propagate.extract(headers)


def context_from_metadata(
    metadata: Collection[tuple[str, str | bytes]] | None,
) -> otel_context.Context | None:
    """The context in gRPC invocation metadata; None when the caller sent none."""
    if not metadata:
        return None
    # Scanned before anything is built: most calls carry no trace context.
    for key, _value in metadata:
        if key == TRACEPARENT:
            break
    else:
        return None
    return propagate.extract({k: v for k, v in metadata if isinstance(v, str)})


def inject_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> list[tuple[str, str | bytes]]:
    """`metadata` plus the current trace context."""
    out = list(metadata or ())
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out.extend(carrier.items())
    return out


# --- spans ---------------------------------------------------------------------------------


@contextmanager
def span(
    name: str,
    *,
    parent: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    record_errors: bool = True,
) -> Iterator[trace.Span]:
    """A span made current for the block, under `parent` when given (a propagated context) and
    the current span otherwise. With record_errors, an exception escaping the block marks the
    span as failed; without, the caller sets the status (e.g. from a gRPC code)."""
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        record_exception=record_errors,
        set_status_on_exception=record_errors,
    ) as current:
        yield current


@contextmanager
def producer(subject: str, carried: Mapping[str, str] | None) -> Iterator[dict[str, str]]:
    """The trace headers to publish a message with, given the context it carries from where it
    was made (an outbox row's). With tracing on, a PRODUCER span covers the block and its context
    is what goes out; off, the carried context goes out as it is."""
    if not carried:
        yield {}
        return
    if not _enabled:
        yield dict(carried)
        return
    with span(
        "publish " + ".".join(subject.split(".")[:2]),  # media.dispatch / media.events
        parent=context_from_headers(carried),
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


def set_error(current: trace.Span, description: str) -> None:
    current.set_status(Status(StatusCode.ERROR, description))


# --- gRPC client side ----------------------------------------------------------------------


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_CallT = TypeVar("_CallT", bound=grpc.aio.Call)
_Details: TypeAlias = grpc.aio.ClientCallDetails
_Next: TypeAlias = Callable[[_Details, _Req], Awaitable[_CallT]]  # the rest of the chain
_Unary: TypeAlias = grpc.aio.UnaryUnaryCall[_Req, _Resp]
_Stream: TypeAlias = grpc.aio.UnaryStreamCall[_Req, _Resp]


class ClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """A CLIENT span per call with its context in the call's metadata. Outside any trace and
    with tracing off it steps aside entirely."""

    async def intercept_unary_unary(
        self, continuation: _Next[_Req, _Unary[_Req, _Resp]], details: _Details, request: _Req
    ) -> _Unary[_Req, _Resp]:
        return await _client_call(continuation, details, request, until_done=True)

    async def intercept_unary_stream(
        self, continuation: _Next[_Req, _Stream[_Req, _Resp]], details: _Details, request: _Req
    ) -> _Stream[_Req, _Resp]:
        # The span covers starting the stream; its messages are the caller's business.
        return await _client_call(continuation, details, request, until_done=False)


async def _client_call(
    continuation: _Next[_Req, _CallT], details: _Details, request: _Req, *, until_done: bool
) -> _CallT:
    """The call in a CLIENT span; with `until_done`, the span waits for its status."""
    if not _traced(details):
        return await continuation(details, request)
    with _client_span(details) as current:
        call = await continuation(_with_context(details), request)
        if until_done:
            _record_code(current, await call.code())
        return call


def _traced(details: grpc.aio.ClientCallDetails) -> bool:
    # Health checks (readiness probes of job_service every few seconds) would only be noise.
    if _method_name(details.method).startswith("grpc."):
        return False
    return _enabled or has_context()


def _method_name(method: str | bytes) -> str:
    return (method.decode() if isinstance(method, bytes) else method).lstrip("/")


@contextmanager
def _client_span(details: grpc.aio.ClientCallDetails) -> Iterator[trace.Span]:
    name = _method_name(details.method)
    service, _, method = name.rpartition("/")
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    ) as current:
        yield current


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        metadata[key] = value
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def _record_code(current: trace.Span, code: grpc.StatusCode) -> None:
    current.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERRORS:
        set_error(current, code.name)


# Failures of the service rather than of the caller (the same split as the alert rules).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For grpc.aio.insecure_channel(..., interceptors=...)."""
    return [ClientInterceptor()]
