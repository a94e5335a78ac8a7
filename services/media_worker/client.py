"""A thin async client for WorkerService (served by job_service).

Each call has its own deadline and is retried a few times, with backoff, while job_service is
UNAVAILABLE (restarting, a rolling deploy): such a call never reached it. Other errors surface as
grpc.aio.AioRpcError for the caller to interpret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from media.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc
from services.common.auth import bearer_metadata
from services.common.backoff import backoff_delay
from services.common.channels import job_service_channel
from services.common.config import TlsSettings

log = logging.getLogger(__name__)

_Resp = TypeVar("_Resp")
_RETRY_BASE_SECONDS = 0.2
_RETRY_CAP_SECONDS = 3.0


class WorkerClient:
    def __init__(
        self,
        addr: str,
        token: str,
        *,
        timeout_seconds: float = 10.0,
        attempts: int = 4,
        max_message_bytes: int = 16 * 1024 * 1024,
        tls: TlsSettings | None = None,
    ) -> None:
        # TLS, with this worker's client certificate for mutual TLS, when configured.
        self._channel = job_service_channel(
            addr, tls or TlsSettings(), max_message_bytes=max_message_bytes
        )
        self._stub = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = bearer_metadata(token)
        self._timeout = timeout_seconds
        self._attempts = attempts

    async def close(self) -> None:
        await self._channel.close()

    async def reachable(self, timeout_seconds: float = 2.0) -> bool:
        """Whether job_service answers at all (its "liveness" health name): the worker's
        readiness. Not job_service's own readiness, which flips during its rolling updates."""
        try:
            await self._health.Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=timeout_seconds
            )
        except grpc.aio.AioRpcError:
            return False
        return True

    async def _call(
        self,
        name: str,
        job_id: str,
        call: Callable[[], Awaitable[_Resp]],
        *,
        attempts: int | None = None,
        retry_deadline: bool = False,
    ) -> _Resp:
        """retry_deadline: also retry DEADLINE_EXCEEDED, for calls that are safe to repeat."""
        retryable = {grpc.StatusCode.UNAVAILABLE}
        if retry_deadline:
            retryable.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        total = attempts or self._attempts
        for attempt in range(1, total + 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in retryable or attempt == total:
                    raise
                delay = backoff_delay(attempt, _RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS)
                log.warning(
                    "%s: %s (attempt %d of %d), retrying in %.2f s",
                    name,
                    exc.code().name,
                    attempt,
                    total,
                    delay,
                    extra={"job_id": job_id},
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def claim(self, job_id: str) -> job_pb2.Job:
        """Starts a new attempt of the job: RUNNING, and job.attempt is the attempt to report
        under. Retried only while UNAVAILABLE: a claim that timed out may have started an
        attempt, and the next delivery of the message claims again anyway."""
        request = worker_service_pb2.ClaimJobRequest(job_id=job_id)
        response = await self._call(
            "ClaimJob",
            job_id,
            lambda: self._stub.ClaimJob(request, timeout=self._timeout, metadata=self._metadata),
        )
        return response.job

    async def report_progress(
        self, job_id: str, attempt: int, progress: int, message: str
    ) -> job_pb2.Job:
        """Progress of a claimed attempt (1 or more)."""
        request = worker_service_pb2.ReportProgressRequest(
            job_id=job_id, attempt=attempt, progress=progress, message=message
        )
        response = await self._call(
            "ReportProgress",
            job_id,
            lambda: self._stub.ReportProgress(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )
        return response.job

    async def complete_success(
        self,
        job_id: str,
        attempt: int,
        outputs: list[job_pb2.Output],
        *,
        model: str,
        generation_seconds: float,
        status_message: str = "",
        attempts: int | None = None,
    ) -> job_pb2.Job:
        generation_time = duration_pb2.Duration()
        generation_time.FromNanoseconds(int(generation_seconds * 1e9))
        request = worker_service_pb2.CompleteJobRequest(
            job_id=job_id,
            attempt=attempt,
            success=worker_service_pb2.JobSuccess(
                outputs=outputs,
                model=model,
                generation_time=generation_time,
                status_message=status_message,
            ),
        )
        return await self._complete(request, attempts)

    async def complete_failure(
        self,
        job_id: str,
        attempt: int,
        code: job_pb2.ErrorCode.ValueType,
        message: str,
        *,
        retryable: bool,
        attempts: int | None = None,
    ) -> job_pb2.Job:
        request = worker_service_pb2.CompleteJobRequest(
            job_id=job_id,
            attempt=attempt,
            failure=worker_service_pb2.JobFailure(code=code, message=message, retryable=retryable),
        )
        return await self._complete(request, attempts)

    async def _complete(
        self, request: worker_service_pb2.CompleteJobRequest, attempts: int | None
    ) -> job_pb2.Job:
        # Repeating the same result is answered with the same job, so a call that may or may not
        # have landed (deadline exceeded) is safe to send again.
        response = await self._call(
            "CompleteJob",
            request.job_id,
            lambda: self._stub.CompleteJob(request, timeout=self._timeout, metadata=self._metadata),
            attempts=attempts,
            retry_deadline=True,
        )
        return response.job
