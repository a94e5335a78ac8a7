"""JobService: the client API. Every call is authenticated; a user only ever sees their own
jobs (another user's job answers NOT_FOUND, not PERMISSION_DENIED, so IDs leak nothing)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common import lifecycle, logs, tracing
from services.common.auth import Identity, TokenVerifier
from services.common.errors import RpcError, invalid_argument, not_found, refused
from services.common.ids import uuid7
from services.common.resolver import Resolver
from services.job_service import metrics as job_metrics
from services.job_service import pages, validation, webhook_validation
from services.job_service.batcher import CreateBatcher
from services.job_service.database import call
from services.job_service.inputs import (
    RETRY_AFTER_SECONDS,
    ByteBudget,
    Claimed,
    Held,
    InputImages,
    Taken,
    UploadTaken,
)
from services.job_service.ratelimit import RateLimiter, SharedBudget
from services.job_service.records import digest
from services.job_service.settings import Limits, WebhookSettings
from services.job_service.store import NewJob, Store
from services.job_service.urls import UrlSigner
from services.job_service.validation import ValidCreate
from services.job_service.webhook_store import NewEndpoint

log = logging.getLogger(__name__)

# When a user at the active-job cap is told to retry: about the length of an image job.
_ACTIVE_CAP_RETRY_SECONDS = 5.0
# What a ListJobs response keeps free of jobs within the message limit (its token, framing).
_LIST_RESPONSE_ROOM = 16 * 1024


class JobApi(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: Store,
        verifier: TokenVerifier,
        signer: UrlSigner,
        limits: Limits,
        inputs: InputImages,
        webhooks: WebhookSettings,
        dns: Resolver,  # resolves a one-off webhook's host
        rate_budget: SharedBudget | None = None,  # None: each replica limits on its own
    ) -> None:
        self._store = store
        self._webhooks = webhooks
        self._dns = dns
        self._verifier = verifier
        self._signer = signer
        self._limits = limits
        self._inputs = inputs
        # Inline input images held by this process's creates, from before they are checked until
        # they are stored: a bound on the memory large creates take, however many arrive.
        self._input_budget = ByteBudget(limits.max_input_bytes_in_flight)
        self._batcher = CreateBatcher(store)
        self._rate = RateLimiter(
            limits.rate_limit_per_minute, limits.rate_limit_burst, shared=rate_budget
        )

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
        await self._check_rate(who.subject)
        inline = _input_image_size(request)
        # The image's bytes count against the process's budget before they are checked (which
        # copies them out of the request) and until they are stored.
        held = self._input_budget.take(inline)
        try:
            return await self._create(job_id, who.subject, request, held)
        finally:
            held.release()

    async def _create(
        self,
        job_id: uuid.UUID,
        owner: str,
        request: job_service_pb2.CreateJobRequest,
        held: Held,
    ) -> job_service_pb2.CreateJobResponse:
        if _has_inline_image(request):
            # Decoding an image is CPU work; keep it off the event loop.
            valid = await asyncio.to_thread(validation.create_request, request, self._limits)
        else:
            valid = validation.create_request(request, self._limits)
        webhook = await self._job_webhook(job_id, owner, request)
        request_digest = _digest(valid)
        request_id = valid.request.request_id or None
        params = valid.params
        if request_id is not None and (valid.image is not None or valid.upload_id is not None):
            # Look for a replay first so a retried create does not store or claim its image again.
            found = await call(self._store.find_by_request_id, owner, request_id)
            if found is not None:
                return self._replay(found[0], found[1], request_digest)
        claimed: Claimed | None = None
        if valid.image is not None:
            image = params.input_image
            key = await self._inputs.store(job_id, valid.take_image(), image.mime_type)
            held.release()  # stored, and this call holds the bytes no more
            image.bucket, image.key = self._inputs.bucket, key
        elif valid.upload_id is not None:
            try:
                claimed = await self._inputs.claim(
                    valid.upload_id, owner, job_id, valid.input_field, params.input_image.mime_type
                )
            except UploadTaken as taken:
                return await self._taken(taken.why, valid, owner, request_digest)
            image = params.input_image
            image.bucket, image.key = claimed.bucket, claimed.key
            image.mime_type = claimed.mime_type
        new = NewJob(
            id=job_id,
            owner=owner,
            request_id=request_id,
            request_digest=request_digest,
            kind=lifecycle.KINDS_BY_NAME[valid.kind],
            params=params,
            trace_headers=tracing.current_headers(),
            webhook=webhook,
        )
        try:
            result = await self._batcher.create(new)
        except RpcError:
            if claimed is not None:
                # Whether the job was written is unknown: its copy stays, the upload is freed for
                # a retry (a second copy, at worst).
                await self._inputs.release(claimed, job_id)
            raise
        if result.over_active_cap or not result.created:
            # Nothing of this call's will be used: not the input it stored, nor the upload.
            if claimed is not None:
                await self._inputs.unclaim(claimed, job_id)
            elif params.input_image.key:
                await self._inputs.delete(params.input_image.key)
        if result.over_active_cap:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many active jobs: at most {self._limits.max_active_jobs_per_user} queued or "
                "running jobs per user (MAX_ACTIVE_JOBS_PER_USER); retry when one has finished",
                retry_after_seconds=_ACTIVE_CAP_RETRY_SECONDS,
            )
        if not result.created:
            return self._replay(result.job, result.request_digest, request_digest)
        if claimed is not None:
            await self._inputs.finish(claimed)
        job_metrics.job_created(new.kind)
        log.debug("job created", extra={"job_id": result.job.id, "kind": valid.kind})
        return job_service_pb2.CreateJobResponse(
            job=result.job,
            created=True,
            webhook_secret=webhook.secret if webhook is not None else "",
        )

    async def _job_webhook(
        self, job_id: uuid.UUID, owner: str, request: job_service_pb2.CreateJobRequest
    ) -> NewEndpoint | None:
        """The one-off endpoint of CreateJobRequest.webhook, checked (None: none was asked for).
        It is written with the job, and its secret returned only by the call that created it."""
        if not request.HasField("webhook"):
            return None
        valid = await webhook_validation.job_webhook(
            request.webhook, self._webhooks.url_policy, self._dns
        )
        return valid.endpoint(owner, self._webhooks.sealer, job_id)

    async def _taken(
        self, why: Taken, valid: ValidCreate, owner: str, request_digest: bytes
    ) -> job_service_pb2.CreateJobResponse:
        """The answer to a create whose upload another create has taken."""
        request_id = valid.request.request_id
        if request_id:
            # That create may be this one's first try, finished meanwhile: answer as a replay.
            found = await call(self._store.find_by_request_id, owner, request_id)
            if found is not None:
                return self._replay(found[0], found[1], request_digest)
        if why is Taken.BUSY:
            raise RpcError(
                grpc.StatusCode.ABORTED,
                "another CreateJob is using this upload right now; retry in a second",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        raise invalid_argument(
            [
                (
                    f"{valid.input_field}.upload_id",
                    "was used by another job already; an upload serves one job (upload the "
                    "image again)",
                )
            ]
        )

    async def _check_rate(self, subject: str, call: str = "CreateJob") -> None:
        """One token of the caller's budget for `call`: CreateJob and CreateInputUpload each have
        a budget of their own (a subject never holds a newline, so the keys cannot meet)."""
        budget = subject if call == "CreateJob" else f"{subject}\n{call}"
        wait = await self._rate.acquire(budget)
        if wait is not None:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: at most {self._rate.per_minute} {call} calls per "
                f"minute per user (RATE_LIMIT_PER_MINUTE), {self._rate.burst} at once "
                f"(RATE_LIMIT_BURST); retry in {wait:.1f} s",
                retry_after_seconds=wait,
            )

    def _replay(
        self, job: job_pb2.Job, stored: bytes | None, sent: bytes
    ) -> job_service_pb2.CreateJobResponse:
        if stored != sent:
            raise invalid_argument(
                [("request_id", "was already used for a request with different parameters")]
            )
        return job_service_pb2.CreateJobResponse(job=self._signer.sign(job), created=False)

    async def CreateInputUpload(
        self,
        request: job_service_pb2.CreateInputUploadRequest,
        context: grpc.aio.ServicerContext[
            job_service_pb2.CreateInputUploadRequest, job_service_pb2.CreateInputUploadResponse
        ],
    ) -> job_service_pb2.CreateInputUploadResponse:
        who = await self._identity(context.invocation_metadata())
        # Each upload is a database row and a signed URL: as limited as the creates they feed.
        await self._check_rate(who.subject, "CreateInputUpload")
        validation.input_upload_request(request, self._limits)
        upload = await self._inputs.new_upload(who.subject, request.mime_type, request.byte_size)
        response = job_service_pb2.CreateInputUploadResponse(
            upload_id=upload.upload_id, url=upload.url, headers=upload.headers
        )
        response.expire_time.FromDatetime(upload.expire_time)
        return response

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
        before = pages.decode(request.page_token, request.kind, request.status, call="ListJobs")
        # One extra row tells whether another page exists.
        found = await call(
            self._store.list_jobs,
            who.subject,
            limit=page_size + 1,
            before=before,
            kind=request.kind,
            status=request.status,
        )
        # A page ends early rather than go over the message limit (AIP-158 lets a page hold
        # fewer than page_size): jobs with long prompts and many outputs add up.
        room = self._limits.max_message_bytes - _LIST_RESPONSE_ROOM
        page: list[job_pb2.Job] = []
        for job in found[:page_size]:
            signed = self._signer.sign(job)
            room -= signed.ByteSize() + 8  # and its tag and length
            if page and room < 0:
                break
            page.append(signed)
        response = job_service_pb2.ListJobsResponse(jobs=page)
        if len(found) > len(page):
            response.next_page_token = pages.encode(page[-1].id, request.kind, request.status)
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


def _input_image(request: job_service_pb2.CreateJobRequest) -> job_pb2.InputImage | None:
    which = request.WhichOneof("params")
    if which is None or not getattr(request, which).HasField("input_image"):
        return None
    image: job_pb2.InputImage = getattr(request, which).input_image
    return image


def _input_image_size(request: job_service_pb2.CreateJobRequest) -> int:
    """The input image's encoded size: about its inline bytes, read without copying them (each
    read of `data` makes a copy)."""
    image = _input_image(request)
    return 0 if image is None else image.ByteSize()


def _has_inline_image(request: job_service_pb2.CreateJobRequest) -> bool:
    image = _input_image(request)
    return image is not None and not image.upload_id


def _digest(valid: ValidCreate) -> bytes:
    """What tells a reused request_id with the same parameters from one with others."""
    if valid.image is not None:
        # The image's sha256 stands for its bytes, which the request no longer holds.
        return digest(valid.request, valid.image_sha256)
    if valid.upload_id is not None:
        # An upload stands for bytes this process never reads: a retry that uploaded the same
        # image again, under a new upload_id, is the same request.
        anonymous = job_service_pb2.CreateJobRequest()
        anonymous.CopyFrom(valid.request)  # small: no image bytes in it
        getattr(anonymous, valid.kind).input_image.ClearField("upload_id")
        return digest(anonymous, b"upload")
    return digest(valid.request)
