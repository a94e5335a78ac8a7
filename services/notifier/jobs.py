"""Reading a job from job_service with the watcher's own credential.

The notifier holds no signing secret and never reads Postgres: forwarding the caller's
`authorization` metadata to GetJob makes job_service do the ownership check (another user's job is
NOT_FOUND) and mint fresh presigned URLs.
"""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common import channels
from services.common.config import TlsSettings

# GetJob is a read, so a transport failure is safe to retry a few times before giving up.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "media.v1.JobService", "method": "GetJob"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def job_service_channel(
    addr: str, max_message_bytes: int, tls: TlsSettings | None = None
) -> grpc.aio.Channel:
    return channels.job_service_channel(
        addr,
        tls or TlsSettings(),
        max_message_bytes=max_message_bytes,
        options=[("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)],
    )


async def job_service_reachable(channel: grpc.aio.Channel, timeout_seconds: float = 2.0) -> bool:
    """Whether job_service answers at all (its "liveness" health name): the notifier's readiness.
    Not job_service's own readiness, which flips during its rolling updates."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=timeout_seconds
        )
    except grpc.aio.AioRpcError:
        return False
    return True


class UpstreamError(Exception):
    """GetJob failed; `status` is what the watcher gets, unchanged where it is about the caller
    (NOT_FOUND, UNAUTHENTICATED, ...) and UNAVAILABLE where job_service could not answer."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(f"{status.code.name}: {status.details}")
        self.status = status


class _Status(grpc.Status):
    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


_TIMED_OUT = "job service did not answer in time"
_UNAVAILABLE = "job service is unavailable"


def _status_of(error: grpc.aio.AioRpcError) -> grpc.Status:
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # Our own deadline on job_service, not the watcher's: the watcher may simply retry.
        return _Status(grpc.StatusCode.UNAVAILABLE, _TIMED_OUT)
    if code == grpc.StatusCode.CANCELLED:  # our channel is closing: the notifier is stopping
        return _Status(grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE)
    try:
        # Keep google.rpc details (BadRequest, RetryInfo) when job_service sent some.
        with_details = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that contradict the status code: ignore them
        with_details = None
    if with_details is not None:
        return rpc_status.to_status(with_details)
    if code == grpc.StatusCode.UNAVAILABLE:
        # Transport messages name internal addresses; the watcher learns only that it may retry.
        return _Status(code, _UNAVAILABLE)
    return _Status(code, error.details() or "")


class JobReader:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float) -> None:
        self._stub = job_service_pb2_grpc.JobServiceStub(channel)
        self._timeout = timeout_seconds

    async def get_job(self, job_id: str, authorization: str) -> job_pb2.Job:
        try:
            response = await self._stub.GetJob(
                job_service_pb2.GetJobRequest(job_id=job_id),
                metadata=(("authorization", authorization),),
                timeout=self._timeout,
                # Within the deadline, wait out a reconnect (job_service restarting) instead of
                # failing the watch at once.
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(_status_of(exc)) from None
        return response.job
