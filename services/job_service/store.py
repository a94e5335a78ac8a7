"""All SQL of job_service. Every state change commits together with its outbox rows.

Methods block (psycopg2); the servicers call them through asyncio.to_thread.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from media.v1 import events_pb2, job_pb2, worker_service_pb2
from services.common import jetstream
from services.common.errors import failed_precondition, not_found
from services.job_service.records import TERMINAL, digest, output_rows, status_name, to_job
from services.job_service.schema import jobs, outbox, outputs

KIND_NAMES = {job_pb2.MEDIA_KIND_IMAGE: "image", job_pb2.MEDIA_KIND_VIDEO: "video"}


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    owner: str
    request_id: str | None
    request_digest: bytes
    kind: int
    params: job_pb2.ImageParams | job_pb2.VideoParams


@dataclass(frozen=True)
class OutboxRow:
    id: int
    subject: str
    payload: bytes


class Store:
    def __init__(self, engine: Engine, *, max_attempts: int, on_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        # Called after every commit that wrote outbox rows, to wake the relay.
        self._on_commit = on_commit

    # --- clients -------------------------------------------------------------------------

    def find_by_request_id(self, owner: str, request_id: str) -> tuple[job_pb2.Job, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.owner == owner, jobs.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            return self._with_outputs(conn, row), row.request_digest

    def create_job(self, new: NewJob) -> tuple[job_pb2.Job, bool]:
        """Inserts the job with its dispatch and its first status event. Returns (job, created);
        created is False when a concurrent create with the same request_id won the race."""
        try:
            with self.engine.begin() as conn:
                row = conn.execute(
                    insert(jobs)
                    .values(
                        id=new.id,
                        owner=new.owner,
                        request_id=new.request_id,
                        request_digest=new.request_digest,
                        kind=new.kind,
                        status=job_pb2.JOB_STATUS_QUEUED,
                        status_message="queued",
                        params=new.params.SerializeToString(),
                    )
                    .returning(jobs)
                ).one()
                job = to_job(row)
                dispatch = events_pb2.JobDispatch(job_id=job.id, kind=new.kind)
                getattr(dispatch, KIND_NAMES[new.kind]).CopyFrom(new.params)
                conn.execute(
                    insert(outbox),
                    [
                        {
                            "subject": jetstream.dispatch_subject(KIND_NAMES[new.kind]),
                            "payload": dispatch.SerializeToString(),
                        },
                        _event_row(job),
                    ],
                )
        except IntegrityError:
            if new.request_id is None:
                raise
            found = self.find_by_request_id(new.owner, new.request_id)
            if found is None:
                raise
            return found[0], False
        self._on_commit()
        return job, True

    def get_job(self, job_id: uuid.UUID, owner: str | None) -> job_pb2.Job | None:
        """The job, if it exists and (when owner is given) belongs to owner."""
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            return None if row is None else self._with_outputs(conn, row)

    def list_jobs(
        self, owner: str, *, limit: int, before: uuid.UUID | None, kind: int, status: int
    ) -> list[job_pb2.Job]:
        """The owner's jobs newest first (UUIDv7 order), keyset-paginated by `before`."""
        query = select(jobs).where(jobs.c.owner == owner)
        if before is not None:
            query = query.where(jobs.c.id < before)
        if kind:
            query = query.where(jobs.c.kind == kind)
        if status:
            query = query.where(jobs.c.status == status)
        query = query.order_by(jobs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            found = self._outputs_of(conn, [r.id for r in rows])
            return [to_job(r, found.get(r.id, ())) for r in rows]

    def cancel_job(self, job_id: uuid.UUID, owner: str) -> job_pb2.Job:
        with self.engine.begin() as conn:
            row = self._lock(conn, job_id, owner)
            if row.status == job_pb2.JOB_STATUS_CANCELED:
                return self._with_outputs(conn, row)
            if row.status in TERMINAL:
                raise failed_precondition(
                    f"job {job_id} is {status_name(row.status)} and can no longer be canceled"
                )
            job = self._transition(
                conn,
                row,
                status=job_pb2.JOB_STATUS_CANCELED,
                status_message="canceled by the owner",
                finished_at=_now(),
            )
        self._on_commit()
        return job

    # --- workers -------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID) -> job_pb2.Job:
        """Starts a new attempt of a dispatched job: RUNNING under attempt + 1."""
        with self.engine.begin() as conn:
            row = self._lock(conn, job_id, None)
            if row.status in TERMINAL:
                raise failed_precondition(f"job {job_id} is {status_name(row.status)}")
            if row.attempt >= self.max_attempts:
                cause = row.error_message or "the worker stopped without reporting"
                self._transition(
                    conn,
                    row,
                    status=job_pb2.JOB_STATUS_FAILED,
                    status_message="attempts exhausted",
                    error_code=job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED,
                    error_message=f"attempts exhausted after {row.attempt}: {cause}",
                    finished_at=_now(),
                )
                self._on_commit()
                raise failed_precondition(f"job {job_id} has exhausted its attempts")
            attempt = row.attempt + 1
            job = self._transition(
                conn,
                row,
                status=job_pb2.JOB_STATUS_RUNNING,
                attempt=attempt,
                progress=0,
                status_message=f"started (attempt {attempt})",
                started_at=row.started_at or _now(),
            )
        self._on_commit()
        return job

    def report_progress(
        self, job_id: uuid.UUID, attempt: int, progress: int, message: str
    ) -> job_pb2.Job:
        with self.engine.begin() as conn:
            row = self._lock(conn, job_id, None)
            self._check_attempt(row, attempt)
            if row.progress == progress and row.status_message == message:
                return self._with_outputs(conn, row)
            job = self._transition(conn, row, progress=progress, status_message=message)
        self._on_commit()
        return job

    def complete(self, request: worker_service_pb2.CompleteJobRequest) -> job_pb2.Job:
        job_id = uuid.UUID(request.job_id)
        result_digest = digest(request)
        with self.engine.begin() as conn:
            row = self._lock(conn, job_id, None)
            if row.status in TERMINAL:
                if row.result_digest == result_digest:
                    return self._with_outputs(conn, row)  # a repeated CompleteJob
                raise failed_precondition(
                    f"job {job_id} is already {status_name(row.status)}; a different result "
                    "cannot be recorded"
                )
            self._check_attempt(row, request.attempt)
            if request.HasField("success"):
                job = self._succeed(conn, row, request.success, result_digest)
            else:
                job = self._fail(conn, row, request.failure, result_digest)
        self._on_commit()
        return job

    def _succeed(
        self, conn: Connection, row: Any, success: worker_service_pb2.JobSuccess, result: bytes
    ) -> job_pb2.Job:
        conn.execute(insert(outputs), output_rows(row.id, success.outputs))
        gen_ms = (
            success.generation_time.ToMilliseconds()
            if success.HasField("generation_time")
            else None
        )
        return self._transition(
            conn,
            row,
            status=job_pb2.JOB_STATUS_SUCCEEDED,
            progress=100,
            status_message=success.status_message or "succeeded",
            model=success.model,
            generation_ms=gen_ms,
            error_code=0,
            error_message="",
            result_digest=result,
            finished_at=_now(),
            outputs_=list(success.outputs),
        )

    def _fail(
        self, conn: Connection, row: Any, failure: worker_service_pb2.JobFailure, result: bytes
    ) -> job_pb2.Job:
        if failure.retryable and row.attempt < self.max_attempts:
            return self._transition(
                conn,
                row,
                status=job_pb2.JOB_STATUS_QUEUED,
                progress=0,
                status_message=f"retrying after attempt {row.attempt}: {failure.message}",
                error_code=failure.code,
                error_message=failure.message,
            )
        code, message = failure.code, failure.message
        if failure.retryable:
            code = job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED
            message = f"attempts exhausted after {row.attempt}: {failure.message}"
        return self._transition(
            conn,
            row,
            status=job_pb2.JOB_STATUS_FAILED,
            status_message="failed",
            error_code=code,
            error_message=message,
            result_digest=result,
            finished_at=_now(),
        )

    # --- outbox --------------------------------------------------------------------------

    def outbox_next(self, published: Sequence[int], limit: int) -> list[OutboxRow]:
        """Deletes the rows already published, then returns the next ones, in one transaction."""
        with self.engine.begin() as conn:
            if published:
                conn.execute(delete(outbox).where(outbox.c.id.in_(published)))
            rows = conn.execute(
                select(outbox.c.id, outbox.c.subject, outbox.c.payload)
                .order_by(outbox.c.id)
                .limit(limit)
            ).all()
        return [OutboxRow(r.id, r.subject, r.payload) for r in rows]

    # --- helpers -------------------------------------------------------------------------

    def _lock(self, conn: Connection, job_id: uuid.UUID, owner: str | None) -> Any:
        query = select(jobs).where(jobs.c.id == job_id).with_for_update()
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        row = conn.execute(query).first()
        if row is None:
            raise not_found(f"job {job_id}")
        return row

    def _check_attempt(self, row: Any, attempt: int) -> None:
        if row.status in TERMINAL:
            raise failed_precondition(f"job {row.id} is {status_name(row.status)}")
        if attempt != row.attempt or row.status != job_pb2.JOB_STATUS_RUNNING:
            raise failed_precondition(
                f"attempt {attempt} of job {row.id} is stale (current attempt {row.attempt}, "
                f"status {status_name(row.status)})"
            )

    def _transition(
        self,
        conn: Connection,
        row: Any,
        *,
        outputs_: Sequence[job_pb2.Output] | None = None,
        **changes: Any,
    ) -> job_pb2.Job:
        """Applies changes, bumps the version and queues the status event, in conn's transaction."""
        updated = conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id)
            .values(**changes, version=jobs.c.version + 1, updated_at=_now())
            .returning(jobs)
        ).one()
        if outputs_ is None:
            job = self._with_outputs(conn, updated)
        else:
            job = to_job(updated)
            job.outputs.extend(outputs_)
        conn.execute(insert(outbox).values(**_event_row(job)))
        return job

    def _with_outputs(self, conn: Connection, row: Any) -> job_pb2.Job:
        return to_job(row, self._outputs_of(conn, [row.id]).get(row.id, ()))

    @staticmethod
    def _outputs_of(conn: Connection, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
        found: dict[uuid.UUID, list[Any]] = defaultdict(list)
        if job_ids:
            rows = conn.execute(
                select(outputs).where(outputs.c.job_id.in_(job_ids)).order_by(outputs.c.idx)
            )
            for r in rows:
                found[r.job_id].append(r)
        return found


def _event_row(job: job_pb2.Job) -> dict[str, Any]:
    return {
        "subject": jetstream.event_subject(job.id),
        "payload": events_pb2.JobEvent(job=job).SerializeToString(),
    }


def _now() -> Any:
    # statement_timestamp(), not now(): within one transaction now() never moves.
    return func.statement_timestamp()
