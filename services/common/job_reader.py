"""Reading jobs from job_service's JobReaderService (its internal listener) with a service's own
credential: the notifier's (role notifier) and the webhook sender's (role webhooks). job_service
answers many jobs per call with their owners and with output URLs signed there, the one place
that signs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from media.v1 import job_pb2, job_reader_service_pb2, job_reader_service_pb2_grpc
from services.common import channels
from services.common.auth import bearer_metadata
from services.common.config import TlsSettings
from services.common.errors import RpcError

log = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

_READER = "media.v1.JobReaderService"
# Reads are safe to retry a few times on a transport failure before giving up.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": _READER, "method": "ReadJobs"},
                    {"service": _READER, "method": "ListActiveJobs"},
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    # RESOURCE_EXHAUSTED: job_service's cap on concurrent calls, answered before
                    # the call is read.
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
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
    """Whether job_service answers at all (its "liveness" health name): a reader's readiness.
    Not job_service's own readiness, which flips during its rolling updates."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=timeout_seconds
        )
    except grpc.aio.AioRpcError:
        return False
    return True


class JobReader:
    """The calls (no caching): JobReaderService with the service's token, at most `concurrency`
    at a time, so that a burst of reads queues here instead of overrunning job_service (which
    caps the calls it serves at once). A failed call raises UNAVAILABLE with `unavailable` as
    its message: whatever went wrong is between this service and job_service (its credential
    included), never its own caller's doing."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        token: str,
        *,
        timeout_seconds: float,
        concurrency: int = 8,
        unavailable: str = "job service is unavailable",
    ) -> None:
        self._unavailable = unavailable
        self._stub = job_reader_service_pb2_grpc.JobReaderServiceStub(channel)
        self._metadata = bearer_metadata(token)
        self._timeout = timeout_seconds
        self._slots = asyncio.Semaphore(concurrency)
        self.calls = 0

    async def read(self, job_ids: Sequence[str]) -> list[job_reader_service_pb2.OwnedJob]:
        request = job_reader_service_pb2.ReadJobsRequest(job_ids=job_ids)
        response = await self._call("ReadJobs", self._stub.ReadJobs, request)
        return list(response.jobs)

    async def list_active(self, owner: str, kinds: Sequence[int]) -> list[job_pb2.Job]:
        request = job_reader_service_pb2.ListActiveJobsRequest(
            owner=owner, kinds=[job_pb2.MediaKind.ValueType(k) for k in kinds]
        )
        response = await self._call("ListActiveJobs", self._stub.ListActiveJobs, request)
        return list(response.jobs)

    async def _call(
        self,
        name: str,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
    ) -> _Response:
        async with self._slots:
            self.calls += 1
            try:
                return await method(
                    request,
                    metadata=self._metadata,
                    timeout=self._timeout,
                    # Within the deadline, wait out a reconnect (job_service restarting).
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as exc:
                raise self._failed(name, exc) from None

    def _failed(self, method: str, exc: grpc.aio.AioRpcError) -> RpcError:
        level = (
            logging.ERROR
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            else logging.WARNING
        )
        log.log(level, "%s failed: %s %s", method, exc.code().name, exc.details())
        return RpcError(grpc.StatusCode.UNAVAILABLE, self._unavailable, retry_after_seconds=1.0)
