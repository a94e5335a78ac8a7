"""JobService: the client API. Every call is authenticated; a user only ever sees their own
jobs (another user's job answers NOT_FOUND, not PERMISSION_DENIED, so IDs leak nothing)."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from typing import TYPE_CHECKING

import grpc
from botocore.exceptions import BotoCoreError, ClientError

from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common import keys, lifecycle, logs, tracing
from services.common.auth import Identity, TokenVerifier
from services.common.errors import RpcError, invalid_argument, not_found, refused, unavailable
from services.common.ids import uuid7
from services.job_service import metrics as job_metrics
from services.job_service import validation
from services.job_service.batcher import CreateBatcher
from services.job_service.database import call
from services.job_service.ratelimit import RateLimiter
from services.job_service.records import digest
from services.job_service.settings import Limits
from services.job_service.store import NewJob, Store
from services.job_service.urls import UrlSigner

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

# When a user at the active-job cap is told to retry: about the length of an image job.
_ACTIVE_CAP_RETRY_SECONDS = 5.0


class JobApi(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: Store,
        verifier: TokenVerifier,
        signer: UrlSigner,
        limits: Limits,
        s3: S3Client,
        bucket: str,
    ) -> None:
        self._store = store
        self._verifier = verifier
        self._signer = signer
        self._limits = limits
        self._s3 = s3
        self._bucket = bucket
        self._batcher = CreateBatcher(store)
        self._rate = RateLimiter(limits.rate_limit_per_minute, limits.rate_limit_burst)

    async def _identity(self, metadata: grpc.aio.Metadata | None) -> Identity:
        return await self._verifier.identify(metadata)

    async def CreateJob(
        self,
        request: job_service_pb2.CreateJobRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.CreateJobRequest, job_service_pb2.CreateJobResponse
        ],
    ) -> job_service_pb2.CreateJobResponse:
        job_id = uuid7()  # the job's one ID, minted before anything else happens
        logs.bind_job_id(str(job_id))  # for any line logged during this call
        who = await self._identity(context.invocation_metadata())
        self._check_rate(who.subject)
        if _has_input_image(request):
            # Decoding an image is CPU work; keep it off the event loop.
            valid = await asyncio.to_thread(validation.create_request, request, self._limits)
        else:
            valid = validation.create_request(request, self._limits)
        request_digest = digest(valid)
        request_id = valid.request_id or None
        kind_name = valid.WhichOneof("params")
        assert kind_name is not None  # validation requires one
        params: job_pb2.ImageParams | job_pb2.VideoParams = getattr(valid, kind_name)
        if params.HasField("input_image"):
            # Look for a replay first so a retried create does not store its image twice.
            if request_id is not None:
                found = await call(self._store.find_by_request_id, who.subject, request_id)
                if found is not None:
                    return self._replay(found[0], found[1], request_digest)
            await self._store_input_image(job_id, params.input_image)
        new = NewJob(
            id=job_id,
            owner=who.subject,
            request_id=request_id,
            request_digest=request_digest,
            kind=lifecycle.KINDS_BY_NAME[kind_name],
            params=params,
            trace_headers=tracing.current_headers(),
        )
        result = await self._batcher.create(new)
        if result.over_active_cap:
            if params.HasField("input_image"):
                await self._delete_input_image(params.input_image)
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many active jobs: at most {self._limits.max_active_jobs_per_user} queued or "
                "running jobs per user (MAX_ACTIVE_JOBS_PER_USER); retry when one has finished",
                retry_after_seconds=_ACTIVE_CAP_RETRY_SECONDS,
            )
        if not result.created:
            return self._replay(result.job, result.request_digest, request_digest)
        job_metrics.job_created(new.kind)
        log.debug("job created", extra={"job_id": result.job.id, "kind": kind_name})
        return job_service_pb2.CreateJobResponse(job=result.job, created=True)

    def _check_rate(self, subject: str) -> None:
        wait = self._rate.acquire(subject)
        if wait is not None:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: at most {self._rate.per_minute} CreateJob calls per "
                f"minute per user (RATE_LIMIT_PER_MINUTE); retry in {wait:.1f} s",
                retry_after_seconds=wait,
            )

    async def _delete_input_image(self, image: job_pb2.InputImage) -> None:
        """Removes the input image of a create that was refused after storing it."""
        try:
            await asyncio.to_thread(self._s3.delete_object, Bucket=image.bucket, Key=image.key)
        except (BotoCoreError, ClientError):
            log.warning("could not delete the input image of a refused create: %s", image.key)

    def _replay(
        self, job: job_pb2.Job, stored: bytes | None, sent: bytes
    ) -> job_service_pb2.CreateJobResponse:
        if stored != sent:
            raise invalid_argument(
                [("request_id", "was already used for a request with different parameters")]
            )
        return job_service_pb2.CreateJobResponse(job=self._signer.sign(job), created=False)

    async def _store_input_image(self, job_id: uuid.UUID, image: job_pb2.InputImage) -> None:
        key = keys.input_key(str(job_id))
        try:
            await asyncio.to_thread(
                self._s3.put_object,
                Bucket=self._bucket,
                Key=key,
                Body=image.data,
                ContentType=image.mime_type,
            )
        except (BotoCoreError, ClientError) as exc:
            raise unavailable("object storage is unavailable; retry later") from exc
        image.data = b""
        image.bucket, image.key = self._bucket, key

    async def GetJob(
        self,
        request: job_service_pb2.GetJobRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.GetJobRequest, job_service_pb2.GetJobResponse
        ],
    ) -> job_service_pb2.GetJobResponse:
        who = await self._identity(context.invocation_metadata())
        job_id = validation.job_id(request.job_id)
        job = await call(self._store.get_job, job_id, who.subject)
        if job is None:
            raise not_found(f"job {request.job_id}")
        return job_service_pb2.GetJobResponse(job=self._signer.sign(job))

    async def ListJobs(
        self,
        request: job_service_pb2.ListJobsRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.ListJobsRequest, job_service_pb2.ListJobsResponse
        ],
    ) -> job_service_pb2.ListJobsResponse:
        who = await self._identity(context.invocation_metadata())
        page_size = validation.list_request(request, self._limits)
        before = _decode_token(request) if request.page_token else None
        # One extra row tells whether another page exists.
        found = await call(
            self._store.list_jobs,
            who.subject,
            limit=page_size + 1,
            before=before,
            kind=request.kind,
            status=request.status,
        )
        page = found[:page_size]
        response = job_service_pb2.ListJobsResponse(jobs=[self._signer.sign(j) for j in page])
        if len(found) > page_size:
            response.next_page_token = _encode_token(request, page[-1].id)
        return response

    async def CancelJob(
        self,
        request: job_service_pb2.CancelJobRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.CancelJobRequest, job_service_pb2.CancelJobResponse
        ],
    ) -> job_service_pb2.CancelJobResponse:
        who = await self._identity(context.invocation_metadata())
        job_id = validation.job_id(request.job_id)
        try:
            job = await call(self._store.cancel_job, job_id, who.subject)
        except lifecycle.Refused as exc:
            raise refused(request.job_id, exc.refusal) from None
        log.info("job canceled", extra={"job_id": job.id})
        return job_service_pb2.CancelJobResponse(job=self._signer.sign(job))


def _has_input_image(request: job_service_pb2.CreateJobRequest) -> bool:
    which = request.WhichOneof("params")
    return which is not None and getattr(request, which).HasField("input_image")


def _encode_token(request: job_service_pb2.ListJobsRequest, last_id: str) -> str:
    # The filters travel in the token so a page cannot be continued under other filters.
    raw = f"1:{request.kind}:{request.status}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(request: job_service_pb2.ListJobsRequest) -> uuid.UUID:
    token = request.page_token
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, kind, status, last_id = raw.split(":")
        parsed = uuid.UUID(last_id)
        ok = version == "1" and int(kind) == request.kind and int(status) == request.status
    except ValueError:
        ok = False
    if not ok:
        raise invalid_argument(
            [("page_token", "is not a token from a ListJobs call with the same filters")]
        )
    return parsed
