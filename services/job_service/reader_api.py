"""JobReaderService: the reads of the notifier and the webhook sender. Only a token with the
notifier or the webhooks role may call it.

The notifier authenticates its own watchers and checks ownership itself, so it reads a job once
for all of them: ReadJobs answers many jobs in one query with their owners (and URLs signed here,
the only place that signs them), ListActiveJobs opens a user's feed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import grpc
from sqlalchemy import Engine, select, text

from media.v1 import job_pb2, job_reader_service_pb2, job_reader_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import NOTIFIER_ROLE, WEBHOOKS_ROLE, TokenVerifier
from services.common.errors import invalid_argument
from services.common.ids import parse_uuid
from services.job_service.database import call
from services.job_service.records import to_jobs
from services.job_service.schema import ACTIVE_PREDICATE, jobs
from services.job_service.urls import UrlSigner

MAX_READ_IDS = 500
# A feed's opening snapshot: the owner's newest unfinished jobs, at most this many.
MAX_ACTIVE_LISTED = 1000
_MAX_OWNER_CHARS = 256  # as a token subject (services.common.auth)
_READER_ROLES = (NOTIFIER_ROLE, WEBHOOKS_ROLE)


class JobReads:
    """The queries (blocking: run them through database.call)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def read(self, job_ids: Sequence[uuid.UUID]) -> list[tuple[str, job_pb2.Job]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.id.in_(job_ids))).all()
            return [(r.owner, job) for r, job in zip(rows, to_jobs(conn, rows), strict=True)]

    def list_active(self, owner: str, kinds: Sequence[int]) -> list[job_pb2.Job]:
        # ACTIVE_PREDICATE spelled as the partial index jobs_owner_active's, so it is used.
        query = select(jobs).where(jobs.c.owner == owner, text(ACTIVE_PREDICATE))
        if kinds:
            query = query.where(jobs.c.kind.in_(kinds))
        query = query.order_by(jobs.c.id.desc()).limit(MAX_ACTIVE_LISTED)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            return to_jobs(conn, rows[::-1])


class JobReaderApi(job_reader_service_pb2_grpc.JobReaderServiceServicer):
    def __init__(self, engine: Engine, verifier: TokenVerifier, signer: UrlSigner) -> None:
        self._reads = JobReads(engine)
        self._verifier = verifier
        self._signer = signer

    async def _require_reader(self, metadata: grpc.aio.Metadata | None) -> None:
        await self._verifier.require(metadata, _READER_ROLES, "JobReaderService")

    async def ReadJobs(
        self,
        request: job_reader_service_pb2.ReadJobsRequest,
        context: grpc.aio.ServicerContext[
            job_reader_service_pb2.ReadJobsRequest, job_reader_service_pb2.ReadJobsResponse
        ],
    ) -> job_reader_service_pb2.ReadJobsResponse:
        await self._require_reader(context.invocation_metadata())
        if len(request.job_ids) > MAX_READ_IDS:
            raise invalid_argument([("job_ids", f"at most {MAX_READ_IDS} per call")])
        ids: list[uuid.UUID] = []
        bad: list[tuple[str, str]] = []
        for i, raw in enumerate(request.job_ids):
            parsed = parse_uuid(raw)
            if parsed is None:
                bad.append((f"job_ids[{i}]", "must be a UUID in canonical form"))
            else:
                ids.append(parsed)
        if bad:
            raise invalid_argument(bad)
        found = await call(self._reads.read, sorted(set(ids))) if ids else []
        return job_reader_service_pb2.ReadJobsResponse(
            jobs=[
                job_reader_service_pb2.OwnedJob(owner=owner, job=self._signer.sign(job))
                for owner, job in found
            ]
        )

    async def ListActiveJobs(
        self,
        request: job_reader_service_pb2.ListActiveJobsRequest,
        context: grpc.aio.ServicerContext[
            job_reader_service_pb2.ListActiveJobsRequest,
            job_reader_service_pb2.ListActiveJobsResponse,
        ],
    ) -> job_reader_service_pb2.ListActiveJobsResponse:
        await self._require_reader(context.invocation_metadata())
        bad: list[tuple[str, str]] = []
        if not request.owner or len(request.owner) > _MAX_OWNER_CHARS:
            bad.append(("owner", f"must be 1 to {_MAX_OWNER_CHARS} characters"))
        kinds = sorted(set(request.kinds))
        if any(k not in lifecycle.KINDS_BY_NAME.values() for k in kinds):
            bad.append(("kinds", "must be MEDIA_KIND_IMAGE or MEDIA_KIND_VIDEO"))
        if bad:
            raise invalid_argument(bad)
        found = await call(self._reads.list_active, request.owner, [int(k) for k in kinds])
        return job_reader_service_pb2.ListActiveJobsResponse(jobs=found)
