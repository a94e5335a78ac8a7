"""NotifierService.WatchJob: the job's current state, then every change in order, then the end
after a terminal state."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc

from media.v1 import job_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import AuthError, bearer_from_metadata
from services.common.errors import invalid_argument, unavailable
from services.common.ids import parse_uuid
from services.notifier.hub import EventHub, Signal, Watcher
from services.notifier.jobs import JobReader, UpstreamError
from services.notifier.metrics import ACTIVE_WATCH_STREAMS

log = logging.getLogger(__name__)

SERVICE_NAME = notifier_service_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name


def is_terminal(job: job_pb2.Job) -> bool:
    return job.status in lifecycle.FINISHED


def _authorization(metadata: grpc.aio.Metadata | None) -> str:
    """The caller's `authorization` value, forwarded unchanged; job_service verifies it."""
    for key, value in metadata or ():
        if key == "authorization" and bearer_from_metadata(((key, value),)) is not None:
            return str(value)
    raise AuthError(
        grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer <token>` metadata"
    )


class NotifierService(notifier_service_pb2_grpc.NotifierServiceServicer):
    def __init__(self, hub: EventHub, jobs: JobReader) -> None:
        self._hub = hub
        self._jobs = jobs
        self.active_streams = 0

    async def WatchJob(
        self,
        request: notifier_service_pb2.WatchJobRequest,
        context: grpc.aio.ServicerContext[
            notifier_service_pb2.WatchJobRequest, notifier_service_pb2.WatchJobResponse
        ],
    ) -> AsyncIterator[notifier_service_pb2.WatchJobResponse]:
        authorization = _authorization(context.invocation_metadata())
        parsed = parse_uuid(request.job_id)
        if parsed is None:
            raise invalid_argument([("job_id", "must be a UUID in canonical form")])
        job_id = str(parsed)  # events are published under the lower-case form
        self.active_streams += 1
        ACTIVE_WATCH_STREAMS.inc()
        log.debug("watch started", extra={"job_id": job_id})
        try:
            # Registered before the first read, so every change after that read reaches us.
            with self._hub.watch(job_id) as watcher:
                async with aclosing(self._changes(job_id, authorization, watcher)) as changes:
                    async for job in changes:
                        yield notifier_service_pb2.WatchJobResponse(job=job)
        except UpstreamError as exc:
            log.info(
                "GetJob failed for a watcher",
                extra={"job_id": job_id, "code": exc.status.code.name},
            )
            # Passed through as is (code, message and details): NOT_FOUND for another user's job,
            # UNAUTHENTICATED for a bad token, UNAVAILABLE when job_service cannot answer.
            status = exc.status
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            self.active_streams -= 1
            ACTIVE_WATCH_STREAMS.dec()
            log.debug("watch ended", extra={"job_id": job_id})

    async def _changes(
        self,
        job_id: str,
        authorization: str,
        watcher: Watcher,
    ) -> AsyncGenerator[job_pb2.Job, None]:
        job = await self._jobs.get_job(job_id, authorization)
        yield job
        if is_terminal(job):
            return
        last_version = job.version
        while True:
            item = await watcher.next()
            if item is Signal.CLOSED:
                raise unavailable("notifier is shutting down; watch again")
            if item is Signal.LAGGED:
                log.info("resyncing a lagging watcher", extra={"job_id": job_id})
                job = await self._jobs.get_job(job_id, authorization)
                if job.version > last_version:
                    yield job
                    last_version = job.version
                if is_terminal(job):
                    return
                continue
            if item.version <= last_version:
                continue  # a redelivery, or older than what the watcher already has
            if is_terminal(item):
                # Events carry no URLs: the last message is a fresh read with presigned URLs.
                final = await self._jobs.get_job(job_id, authorization)
                if not is_terminal(final) or final.version < item.version:
                    log.warning(
                        "job service returned an older state than a terminal event",
                        extra={"job_id": job_id, "version": item.version},
                    )
                    final = item
                yield final
                return
            yield item
            last_version = item.version
