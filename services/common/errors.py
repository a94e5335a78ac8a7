"""Turning failures into gRPC statuses the way Google's API guidelines do.

Handlers raise `RpcError`; the server's interceptor turns it into a status with
google.rpc details (BadRequest for bad fields, RetryInfo where a retry makes sense, ErrorInfo
where a program must tell one refusal from another without parsing the message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.lifecycle import Reason, Refusal, status_from_name, status_name

_D = TypeVar("_D", bound=Message)

# ErrorInfo of FAILED_PRECONDITION refusals: a lifecycle.Reason, and metadata "status" (the job's
# status name).
ERROR_DOMAIN = "media.v1"


@dataclass
class RpcError(Exception):
    code: grpc.StatusCode
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)  # (field, description)
    retry_after_seconds: float | None = None
    reason: str = ""  # google.rpc.ErrorInfo reason (a lifecycle.Reason)
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo metadata

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> grpc.Status:
        details = []
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
            details.append(_pack(info))
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )
        return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def invalid_argument(violations: list[tuple[str, str]]) -> RpcError:
    summary = "; ".join(f"{f}: {d}" for f, d in violations)
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, summary, violations)


def not_found(what: str) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, f"{what} not found")


def failed_precondition(message: str, reason: str = "", status: str = "") -> RpcError:
    metadata = {"status": status} if status else {}
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, message, reason=reason, metadata=metadata)


def refused(job_id: str, refusal: Refusal) -> RpcError:
    """The error a lifecycle refusal answers with."""
    if refusal.reason == Reason.JOB_NOT_FOUND:
        return not_found(f"job {job_id}")
    status = "" if refusal.status is None else status_name(refusal.status)
    return failed_precondition(f"job {job_id}: {refusal.message}", refusal.reason, status)


def unavailable(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAVAILABLE, message)


def details_of(error: grpc.aio.AioRpcError | grpc.RpcError, kind: type[_D]) -> list[_D]:
    """The google.rpc details of type `kind` (BadRequest, RetryInfo, ErrorInfo, ...) carried by a
    failed call; none when its details contradict its status code."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return []
    found: list[_D] = []
    for detail in status.details if status else ():
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by a failed call, for clients and tests."""
    return [
        (v.field, v.description)
        for bad in details_of(error, error_details_pb2.BadRequest)
        for v in bad.field_violations
    ]


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata carried by a failed call; ("", {}) if it has none."""
    for info in details_of(error, error_details_pb2.ErrorInfo):
        return info.reason, dict(info.metadata)
    return "", {}


def refusal_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> Refusal | None:
    """The lifecycle refusal a failed call carries in its ErrorInfo (None: it carries none)."""
    reason, metadata = error_info(error)
    try:
        known = Reason(reason)
    except ValueError:
        return None
    return Refusal(known, error.details() or "", status_from_name(metadata.get("status", "")))
