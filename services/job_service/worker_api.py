"""WorkerService: how media workers move a job along. Only worker credentials may call it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec

import grpc

from media.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc
from services.common.auth import WORKER_ROLE, TokenVerifier
from services.common.errors import invalid_argument, refused
from services.common.lifecycle import Refused, status_name
from services.job_service import validation
from services.job_service.database import call
from services.job_service.store import Store

P = ParamSpec("P")

log = logging.getLogger(__name__)

_MAX_FAILURE_MESSAGE = 2000


class WorkerApi(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, store: Store, verifier: TokenVerifier, bucket: str = "") -> None:
        self._store = store
        self._verifier = verifier
        self._bucket = bucket  # outputs must be stored here (empty: not checked)

    async def _require_worker(self, metadata: grpc.aio.Metadata | None) -> None:
        await self._verifier.require(metadata, WORKER_ROLE, "WorkerService")

    async def _change(
        self, job_id: str, change: Callable[P, job_pb2.Job], *args: P.args, **kwargs: P.kwargs
    ) -> job_pb2.Job:
        try:
            return await call(change, *args, **kwargs)
        except Refused as exc:
            raise refused(job_id, exc.refusal) from None

    async def ClaimJob(
        self,
        request: worker_service_pb2.ClaimJobRequest,
        context: grpc.aio.ServicerContext[
            worker_service_pb2.ClaimJobRequest, worker_service_pb2.ClaimJobResponse
        ],
    ) -> worker_service_pb2.ClaimJobResponse:
        await self._require_worker(context.invocation_metadata())
        job_id = validation.job_id(request.job_id)
        job = await self._change(request.job_id, self._store.claim, job_id)
        log.info("job started", extra={"job_id": job.id, "attempt": job.attempt})
        return worker_service_pb2.ClaimJobResponse(job=job)

    async def ReportProgress(
        self,
        request: worker_service_pb2.ReportProgressRequest,
        context: grpc.aio.ServicerContext[
            worker_service_pb2.ReportProgressRequest, worker_service_pb2.ReportProgressResponse
        ],
    ) -> worker_service_pb2.ReportProgressResponse:
        await self._require_worker(context.invocation_metadata())
        job_id = validation.progress_request(request)
        job = await self._change(
            request.job_id,
            self._store.report_progress,
            job_id,
            request.attempt,
            request.progress,
            request.message,
        )
        return worker_service_pb2.ReportProgressResponse(job=job)

    async def CompleteJob(
        self,
        request: worker_service_pb2.CompleteJobRequest,
        context: grpc.aio.ServicerContext[
            worker_service_pb2.CompleteJobRequest, worker_service_pb2.CompleteJobResponse
        ],
    ) -> worker_service_pb2.CompleteJobResponse:
        await self._require_worker(context.invocation_metadata())
        validation.complete_request(request)
        if self._bucket and request.HasField("success"):
            elsewhere = [
                (f"success.outputs[{i}].bucket", f"must be {self._bucket}")
                for i, o in enumerate(request.success.outputs)
                if o.bucket != self._bucket
            ]
            if elsewhere:
                raise invalid_argument(elsewhere)
        if request.HasField("failure"):
            # An error text is for people; a worker must not be refused for a long one.
            request.failure.message = request.failure.message[:_MAX_FAILURE_MESSAGE]
        job = await self._change(request.job_id, self._store.complete, request)
        log.info(
            "job %s",
            status_name(job.status).lower(),
            extra={"job_id": job.id, "attempt": job.attempt, "status": status_name(job.status)},
        )
        return worker_service_pb2.CompleteJobResponse(job=job)
