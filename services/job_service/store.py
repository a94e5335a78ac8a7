"""All SQL of job_service. Every state change commits together with its outbox rows.

Methods block (psycopg2); the servicers call them through asyncio.to_thread.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from media.v1 import events_pb2, job_pb2, worker_service_pb2
from services.common import jetstream, tracing
from services.common.errors import (
    ATTEMPT_STALE,
    JOB_FINISHED,
    RpcError,
    failed_precondition,
    not_found,
)
from services.common.ids import uuid7
from services.job_service import metrics as job_metrics
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
    # The trace context of the CreateJob call, stored with its outbox rows (creates are batched,
    # so it cannot be read from the context the transaction runs in).
    trace_headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Created:
    job: job_pb2.Job
    created: bool  # False: the request_id matched an existing job, returned instead
    request_digest: bytes | None  # of the job returned
    # True: not created because the owner has max_active_per_owner jobs queued or running
    # (job is then empty).
    over_active_cap: bool = False


@dataclass(frozen=True)
class OutboxRow:
    id: uuid.UUID  # UUIDv7, unique across databases: it is the Nats-Msg-Id
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None  # trace context, published as NATS headers


class _Tx:
    """One transaction and the outbox rows it queues; they are inserted just before commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.outbox: list[dict[str, Any]] = []


class Store:
    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int,
        on_commit: Callable[[list[OutboxRow]], None],
        max_active_per_owner: int = 0,
    ) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.max_active_per_owner = max_active_per_owner  # 0: no cap
        # Receives the outbox rows of every commit that wrote some, so the relay can publish them
        # without reading them back.
        self._on_commit = on_commit

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self.engine.begin() as conn:
            tx = _Tx(conn)
            yield tx
            written = _write_outbox(conn, tx.outbox)
        if written:
            self._on_commit(written)

    # --- clients -------------------------------------------------------------------------

    def find_by_request_id(self, owner: str, request_id: str) -> tuple[job_pb2.Job, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.owner == owner, jobs.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            return self._with_outputs(conn, row), row.request_digest

    def create_jobs(self, batch: Sequence[NewJob]) -> list[Created]:
        """Inserts jobs with their dispatches and first status events in one transaction (one
        statement per table however many jobs). A job whose (owner, request_id) exists already is
        not inserted: its entry holds the existing job, with created False. A job over its
        owner's cap of active jobs is not inserted either: its entry has over_active_cap."""
        with self._transaction() as tx:
            conn = tx.conn
            refused = self._over_active_cap(conn, batch) if self.max_active_per_owner else set()
            accepted = [_job_values(new) for new in batch if new.id not in refused]
            inserted = (
                {row.id: row for row in conn.execute(_INSERT_JOBS, accepted)} if accepted else {}
            )
            results: list[Created] = []
            for new in batch:
                if new.id in refused:
                    results.append(Created(job_pb2.Job(), False, None, over_active_cap=True))
                    continue
                row = inserted.get(new.id)
                if row is None:  # the request_id was used before (or earlier in this batch)
                    existing = conn.execute(
                        select(jobs).where(
                            jobs.c.owner == new.owner, jobs.c.request_id == new.request_id
                        )
                    ).one()
                    job = self._with_outputs(conn, existing)
                    results.append(Created(job, False, existing.request_digest))
                    continue
                job = to_job(row)
                kind = KIND_NAMES[new.kind]
                dispatch = events_pb2.JobDispatch(job_id=job.id, kind=new.kind)
                getattr(dispatch, kind).CopyFrom(new.params)
                tx.outbox.append(
                    {
                        "subject": jetstream.dispatch_subject(kind),
                        "payload": dispatch.SerializeToString(),
                        "headers": new.trace_headers,
                    }
                )
                tx.outbox.append(_event_row(job, new.trace_headers))
                results.append(Created(job, True, new.request_digest))
        return results

    def _over_active_cap(self, conn: Connection, batch: Sequence[NewJob]) -> set[uuid.UUID]:
        """The jobs of the batch that would take their owner past the cap, in batch order.

        A transaction-scoped advisory lock per owner serializes the check-then-insert of
        concurrent creates by one owner (other batches, other replicas), so the cap is exact;
        owners are locked in sorted order so that two batches cannot deadlock. Counting uses the
        partial index jobs_owner_active (queued and running jobs only)."""
        owners = sorted({new.owner for new in batch})
        conn.execute(_LOCK_OWNERS, {"owners": owners})
        active = dict(conn.execute(_COUNT_ACTIVE, {"owners": owners}).tuples().all())
        refused: set[uuid.UUID] = set()
        for new in batch:
            if active.get(new.owner, 0) < self.max_active_per_owner:
                active[new.owner] = active.get(new.owner, 0) + 1
            elif new.request_id is None or not self._request_id_used(conn, new):
                refused.add(new.id)
            # else: a repeat of a create that succeeded; the insert returns the existing job
        return refused

    @staticmethod
    def _request_id_used(conn: Connection, new: NewJob) -> bool:
        found = conn.execute(
            select(jobs.c.id).where(jobs.c.owner == new.owner, jobs.c.request_id == new.request_id)
        ).first()
        return found is not None

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
        with self._transaction() as tx:
            row = self._lock(tx.conn, job_id, owner)
            if row.status == job_pb2.JOB_STATUS_CANCELED:
                return self._with_outputs(tx.conn, row)
            if row.status in TERMINAL:
                raise _finished(row, " and can no longer be canceled")
            return self._transition(
                tx,
                row,
                status=job_pb2.JOB_STATUS_CANCELED,
                status_message="canceled by the owner",
                finished_at=_now(),
            )

    # --- workers -------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID) -> job_pb2.Job:
        """Starts a new attempt of a dispatched job: RUNNING under attempt + 1."""
        with self._transaction() as tx:
            row = self._lock(tx.conn, job_id, None)
            if row.status in TERMINAL:
                raise _finished(row)
            exhausted = row.attempt >= self.max_attempts
            if exhausted:
                # Commit the failure first; the caller is refused after the transaction.
                cause = row.error_message or "the worker stopped without reporting"
                self._transition(
                    tx,
                    row,
                    status=job_pb2.JOB_STATUS_FAILED,
                    status_message="attempts exhausted",
                    error_code=job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED,
                    error_message=f"attempts exhausted after {row.attempt}: {cause}",
                    finished_at=_now(),
                )
            else:
                attempt = row.attempt + 1
                job = self._transition(
                    tx,
                    row,
                    status=job_pb2.JOB_STATUS_RUNNING,
                    attempt=attempt,
                    progress=0,
                    status_message=f"started (attempt {attempt})",
                    started_at=row.started_at or _now(),
                )
        if exhausted:
            raise failed_precondition(
                f"job {job_id} has exhausted its attempts",
                JOB_FINISHED,
                status_name(job_pb2.JOB_STATUS_FAILED),
            )
        return job

    def report_progress(
        self, job_id: uuid.UUID, attempt: int, progress: int, message: str
    ) -> job_pb2.Job:
        with self._transaction() as tx:
            row = self._lock(tx.conn, job_id, None)
            self._check_attempt(row, attempt)
            if row.progress == progress and row.status_message == message:
                return self._with_outputs(tx.conn, row)
            return self._transition(tx, row, progress=progress, status_message=message)

    def complete(self, request: worker_service_pb2.CompleteJobRequest) -> job_pb2.Job:
        job_id = uuid.UUID(request.job_id)
        result_digest = digest(request)
        with self._transaction() as tx:
            row = self._lock(tx.conn, job_id, None)
            if row.status in TERMINAL:
                if row.result_digest == result_digest:
                    return self._with_outputs(tx.conn, row)  # a repeated CompleteJob
                raise failed_precondition(
                    f"job {job_id} is already {status_name(row.status)}; a different result "
                    "cannot be recorded",
                    JOB_FINISHED,
                    status_name(row.status),
                )
            self._check_attempt(row, request.attempt)
            if request.HasField("success"):
                return self._succeed(tx, row, request.success, result_digest)
            return self._fail(tx, row, request.failure, result_digest)

    def _succeed(
        self, tx: _Tx, row: Any, success: worker_service_pb2.JobSuccess, result: bytes
    ) -> job_pb2.Job:
        tx.conn.execute(insert(outputs), output_rows(row.id, success.outputs))
        gen_ms = (
            success.generation_time.ToMilliseconds()
            if success.HasField("generation_time")
            else None
        )
        return self._transition(
            tx,
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
        self, tx: _Tx, row: Any, failure: worker_service_pb2.JobFailure, result: bytes
    ) -> job_pb2.Job:
        if failure.retryable and row.attempt < self.max_attempts:
            return self._transition(
                tx,
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
            tx,
            row,
            status=job_pb2.JOB_STATUS_FAILED,
            status_message="failed",
            error_code=code,
            error_message=message,
            result_digest=result,
            finished_at=_now(),
        )

    # --- outbox --------------------------------------------------------------------------

    def outbox_next(
        self, published: Sequence[uuid.UUID], limit: int, *, min_age_seconds: float = 0.0
    ) -> list[OutboxRow]:
        """Deletes the rows already published, then returns the oldest others that are at least
        min_age_seconds old (younger ones are still with the relay of the process that wrote
        them), in one transaction."""
        with self.engine.begin() as conn:
            if published:
                conn.execute(delete(outbox).where(outbox.c.id.in_(published)))
            if limit <= 0:
                return []
            rows = conn.execute(
                select(outbox.c.id, outbox.c.subject, outbox.c.payload, outbox.c.headers)
                .where(
                    outbox.c.created_at <= func.statement_timestamp() - min_age_seconds * _SECOND
                )
                .order_by(outbox.c.id)
                .limit(limit)
            ).all()
        return [OutboxRow(r.id, r.subject, r.payload, r.headers) for r in rows]

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
            raise _finished(row)
        if attempt != row.attempt or row.status != job_pb2.JOB_STATUS_RUNNING:
            raise failed_precondition(
                f"attempt {attempt} of job {row.id} is stale (current attempt {row.attempt}, "
                f"status {status_name(row.status)})",
                ATTEMPT_STALE,
                status_name(row.status),
            )

    def _transition(
        self,
        tx: _Tx,
        row: Any,
        *,
        outputs_: Sequence[job_pb2.Output] | None = None,
        **changes: Any,
    ) -> job_pb2.Job:
        """Applies changes, bumps the version and queues the status event, in tx."""
        updated = tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id)
            .values(**changes, version=jobs.c.version + 1, updated_at=_now())
            .returning(jobs)
        ).one()
        if outputs_ is None:
            job = self._with_outputs(tx.conn, updated)
        else:
            job = to_job(updated)
            job.outputs.extend(outputs_)
        # The calling RPC's trace context (asyncio.to_thread carries it into this thread).
        tx.outbox.append(_event_row(job, tracing.current_headers()))
        if "status" in changes:
            # Counted before the commit: a failed commit (rare) counts a completion twice.
            job_metrics.job_finished(row.kind, changes["status"])
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


_SECOND = literal_column("interval '1 second'")

# Built once: constructing a statement costs more than executing it.
_INSERT_JOBS = (
    pg_insert(jobs)
    .on_conflict_do_nothing(
        index_elements=[jobs.c.owner, jobs.c.request_id],
        index_where=jobs.c.request_id.is_not(None),
    )
    .returning(jobs)
)
_INSERT_OUTBOX = insert(outbox)
_LOCK_OWNERS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('active-jobs:' || owner, 0)) "
    "FROM unnest(CAST(:owners AS text[])) WITH ORDINALITY AS o(owner, n) ORDER BY n"
)
_COUNT_ACTIVE = text(
    "SELECT owner, count(*) FROM jobs WHERE owner = ANY(CAST(:owners AS text[])) "
    "AND status IN (1, 2) GROUP BY owner"
)


def _write_outbox(conn: Connection, rows: list[dict[str, Any]]) -> list[OutboxRow]:
    if not rows:
        return []
    # The ID is minted here, not by a database sequence: JetStream deduplicates on it, and a
    # sequence restarts with a new database while the stream remembers the old IDs.
    for row in rows:
        row["id"] = uuid7()
    conn.execute(_INSERT_OUTBOX, rows)
    return [OutboxRow(r["id"], r["subject"], r["payload"], r["headers"]) for r in rows]


def _job_values(new: NewJob) -> dict[str, Any]:
    return {
        "id": new.id,
        "owner": new.owner,
        "request_id": new.request_id,
        "request_digest": new.request_digest,
        "kind": new.kind,
        "status": job_pb2.JOB_STATUS_QUEUED,
        "status_message": "queued",
        "params": new.params.SerializeToString(),
    }


def _event_row(job: job_pb2.Job, headers: dict[str, str] | None) -> dict[str, Any]:
    return {
        "subject": jetstream.event_subject(job.id),
        "payload": events_pb2.JobEvent(job=job).SerializeToString(),
        "headers": headers,
    }


def _finished(row: Any, more: str = "") -> RpcError:
    status = status_name(row.status)
    return failed_precondition(f"job {row.id} is {status}{more}", JOB_FINISHED, status)


def _now() -> Any:
    # statement_timestamp(), not now(): within one transaction now() never moves.
    return func.statement_timestamp()
