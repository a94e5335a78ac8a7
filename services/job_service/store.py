"""Where job state is written. Every state change commits together with its outbox rows.

A change locks the job's row, asks the lifecycle core (services/common/lifecycle.py) what the
command does, and writes its answer: the new state, the outbox rows it emits, or nothing. A
refusal is raised as lifecycle.Refused for the servicers to map to an RPC error.

Methods block (psycopg2); the servicers call them through database.call (the SQL bulkhead).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

from sqlalchemy import ColumnElement, Connection, Engine, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from media.v1 import job_pb2, worker_service_pb2
from services.common import lifecycle, tracing
from services.common.lifecycle import (
    Cancel,
    Claim,
    Command,
    FailFinal,
    FailRetryable,
    JobState,
    Progress,
    Refusal,
    Refused,
    Succeed,
    Transition,
    Unchanged,
)
from services.job_service import metrics as job_metrics
from services.job_service.notification_store import write_notification
from services.job_service.outbox import OutboxRow, OutboxValues, write_outbox
from services.job_service.records import (
    JobRow,
    digest,
    outbox_rows,
    output_rows,
    to_job,
    to_jobs,
)
from services.job_service.schema import ACTIVE_PREDICATE, jobs, outputs
from services.job_service.webhook_store import NewEndpoint, write_endpoints

# Every job starts the same way; asked once.
_CREATED = lifecycle.create()


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    owner: str
    request_id: str | None
    request_digest: bytes
    kind: lifecycle.Kind
    params: job_pb2.ImageParams | job_pb2.VideoParams
    # The trace context of the CreateJob call, stored with its outbox rows (creates are batched,
    # so it cannot be read from the context the transaction runs in).
    trace_headers: dict[str, str] | None = None
    # CreateJobRequest.webhook: a one-off endpoint written with the job (not with a replay).
    webhook: NewEndpoint | None = None


@dataclass(frozen=True)
class Created:
    job: job_pb2.Job
    created: bool  # False: the request_id matched an existing job, returned instead
    request_digest: bytes | None  # of the job returned
    # True: not created because the owner has max_active_per_owner jobs queued or running
    # (job is then empty).
    over_active_cap: bool = False


class _Tx:
    """One transaction and the outbox rows it queues; they are inserted just before commit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.outbox: list[OutboxValues] = []


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
            written = write_outbox(conn, tx.outbox)
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
        """Inserts jobs with their dispatches, first status events and one-off webhook endpoints
        in one transaction (one statement per table however many jobs). A job whose (owner,
        request_id) exists already is not inserted: its entry holds the existing job, with
        created False. A job over its owner's cap of active jobs is not inserted either: its
        entry has over_active_cap."""
        with self._transaction() as tx:
            conn = tx.conn
            refused = self._over_active_cap(conn, batch) if self.max_active_per_owner else set()
            accepted = [_job_values(new) for new in batch if new.id not in refused]
            inserted = (
                {row.id: row for row in conn.execute(_INSERT_JOBS, accepted)} if accepted else {}
            )
            results: list[Created] = []
            endpoints: list[NewEndpoint] = []
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
                tx.outbox.extend(
                    outbox_rows(
                        _CREATED.emit,
                        job,
                        new.params,
                        new.trace_headers,
                        owner=new.owner,
                        event_type=_CREATED.event_type,
                    )
                )
                if new.webhook is not None:
                    endpoints.append(new.webhook)
                results.append(Created(job, True, new.request_digest))
            write_endpoints(conn, endpoints)
        return results

    def _over_active_cap(self, conn: Connection, batch: Sequence[NewJob]) -> set[uuid.UUID]:
        """The jobs of the batch that would take their owner past the cap, in batch order.

        A transaction-scoped advisory lock per owner serializes the check-then-insert of
        concurrent creates by one owner (other batches, other replicas), so the cap is exact;
        owners are locked in sorted order so that two batches cannot deadlock. Counting uses the
        partial index jobs_owner_active (queued and running jobs only)."""
        owners = sorted({new.owner for new in batch})
        conn.execute(_LOCK_OWNERS, {"owners": owners})
        active: dict[str, int] = dict(
            conn.execute(_COUNT_ACTIVE, {"owners": owners}).tuples().all()
        )
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
        self,
        owner: str,
        *,
        limit: int,
        before: uuid.UUID | None,
        kind: lifecycle.Kind,
        status: lifecycle.Status,
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
            return to_jobs(conn, conn.execute(query).all())

    def cancel_job(self, job_id: uuid.UUID, owner: str) -> job_pb2.Job:
        return self._change(job_id, owner, Cancel())

    # --- workers -------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID) -> job_pb2.Job:
        """Starts a new attempt of a dispatched job: RUNNING under attempt + 1."""
        return self._change(job_id, None, Claim(self.max_attempts))

    def report_progress(
        self, job_id: uuid.UUID, attempt: int, progress: int, message: str
    ) -> job_pb2.Job:
        return self._change(job_id, None, Progress(attempt, progress, message))

    def complete(self, request: worker_service_pb2.CompleteJobRequest) -> job_pb2.Job:
        job_id = uuid.UUID(request.job_id)
        result = digest(request)
        if request.HasField("success"):
            success = request.success
            gen_ms = (
                success.generation_time.ToMilliseconds()
                if success.HasField("generation_time")
                else None
            )
            return self._change(
                job_id,
                None,
                Succeed(request.attempt, result, success.status_message),
                extra={"model": success.model, "generation_ms": gen_ms},
                new_outputs=success.outputs,
            )
        failure = request.failure
        command: Command
        if failure.retryable:
            command = FailRetryable(
                request.attempt, failure.code, failure.message, result, self.max_attempts
            )
        else:
            command = FailFinal(request.attempt, failure.code, failure.message, result)
        return self._change(job_id, None, command)

    # --- helpers -------------------------------------------------------------------------

    def _lock(self, conn: Connection, job_id: uuid.UUID, owner: str | None) -> JobRow:
        query = select(jobs).where(jobs.c.id == job_id).with_for_update()
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        row = conn.execute(query).first()
        if row is None:
            raise Refused(Refusal(lifecycle.Reason.JOB_NOT_FOUND, "not found", None))
        return row

    def _change(
        self,
        job_id: uuid.UUID,
        owner: str | None,
        command: Command,
        *,
        extra: dict[str, object] | None = None,
        new_outputs: Sequence[job_pb2.Output] = (),
    ) -> job_pb2.Job:
        """Locks the job, asks the core what `command` does and writes it. `extra` columns and
        `new_outputs` are written with a transition (a success), never with a refusal."""
        with self._transaction() as tx:
            row = self._lock(tx.conn, job_id, owner)
            decision = lifecycle.decide(_state(row), command)
            if isinstance(decision, Refusal):
                raise Refused(decision)
            if isinstance(decision, Unchanged):
                return self._with_outputs(tx.conn, row)
            job = self._write(tx, row, decision, extra or {}, new_outputs)
        if decision.then_refuse is not None:  # the change is committed; now the refusal
            raise Refused(decision.then_refuse)
        return job

    def _write(
        self,
        tx: _Tx,
        row: JobRow,
        transition: Transition,
        extra: dict[str, object],
        new_outputs: Sequence[job_pb2.Output],
    ) -> job_pb2.Job:
        """Applies a transition, bumps the version and queues what it emits, in tx."""
        state = transition.state
        values: dict[str, object] = {**asdict(state), **extra}
        if state.status == lifecycle.RUNNING and row.started_at is None:
            values["started_at"] = _now()
        if transition.finished:
            values["finished_at"] = _now()
        if new_outputs:
            tx.conn.execute(insert(outputs), output_rows(row.id, new_outputs))
        updated = tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id)
            .values(**values, version=jobs.c.version + 1, updated_at=_now())
            .returning(jobs)
        ).one()
        if new_outputs:
            job = to_job(updated)
            job.outputs.extend(new_outputs)
        else:
            job = self._with_outputs(tx.conn, updated)
        # The inbox entry of a finished job, committed with the change and carried by its event.
        notification = (
            write_notification(tx.conn, row.owner, job, transition.event_type)
            if transition.finished
            else None
        )
        # The calling RPC's trace context (database.call carries it into this thread).
        tx.outbox.extend(
            outbox_rows(
                transition.emit,
                job,
                None,
                tracing.current_headers(),
                owner=row.owner,
                event_type=transition.event_type,
                notification=notification,
            )
        )
        if state.status != row.status:
            # Counted before the commit: a failed commit (rare) counts a completion twice.
            job_metrics.job_finished(row.kind, state.status)
        return job

    def _with_outputs(self, conn: Connection, row: JobRow) -> job_pb2.Job:
        return to_jobs(conn, [row])[0]


# Built once: constructing a statement costs more than executing it.
_INSERT_JOBS = (
    pg_insert(jobs)
    .on_conflict_do_nothing(
        index_elements=[jobs.c.owner, jobs.c.request_id],
        index_where=jobs.c.request_id.is_not(None),
    )
    .returning(jobs)
)
_LOCK_OWNERS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('active-jobs:' || owner, 0)) "
    "FROM unnest(CAST(:owners AS text[])) WITH ORDINALITY AS o(owner, n) ORDER BY n"
)
_COUNT_ACTIVE = text(
    "SELECT owner, count(*) FROM jobs WHERE owner = ANY(CAST(:owners AS text[])) "
    f"AND {ACTIVE_PREDICATE} GROUP BY owner"
)


def _job_values(new: NewJob) -> dict[str, object]:
    return {
        "id": new.id,
        "owner": new.owner,
        "request_id": new.request_id,
        "request_digest": new.request_digest,
        "kind": new.kind,
        "status": _CREATED.state.status,
        "status_message": _CREATED.state.status_message,
        "params": new.params.SerializeToString(),
    }


def _state(row: JobRow) -> JobState:
    return JobState(**{f.name: getattr(row, f.name) for f in fields(JobState)})


def _now() -> ColumnElement[dt.datetime]:
    # statement_timestamp(), not now(): within one transaction now() never moves.
    return func.statement_timestamp()
