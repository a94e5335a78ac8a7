"""The sweeper's SQL: its engine and lock, the finished jobs whose inputs are due, what the
database knows of the jobs objects are stored for, where each listing stopped, and the rows past
their retention (upload records, notifications, webhook deliveries and one-off endpoints), and
the webhook secrets to seal again with the first key. Blocking: the sweeper (sweeper.py) runs
these on its own thread and connection."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.pool import NullPool

from media.v1 import job_pb2, webhook_service_pb2
from services.common import lifecycle
from services.job_service.schema import (
    INPUT_UNSWEPT_PREDICATE,
    input_uploads,
    jobs,
    notifications,
    outputs,
    sweep_cursors,
    webhook_deliveries,
    webhook_endpoints,
)
from services.job_service.sweep_rules import JobFacts

# Two 32-bit keys: that key space never meets the single 64-bit keys of the migrations' lock and
# the per-owner locks of CreateJob. Any constants do, as long as every replica uses the same.
LOCK_KEYS = (7221, 5)

_SECOND: ColumnElement[dt.timedelta] = literal_column("interval '1 second'")


def sweeper_engine(database_url: str) -> Engine:
    """One connection per round, really closed after it (NullPool), so the advisory lock goes
    with it even when the round failed half-way; autocommit: no statement waits in an open
    transaction while S3 answers."""
    return create_engine(
        database_url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={
            "connect_timeout": 5,
            "options": "-c statement_timeout=15000 -c lock_timeout=5000",
            "application_name": "job_service-sweeper",
        },
    )


def try_lock(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": LOCK_KEYS[0], "b": LOCK_KEYS[1]}
        ).scalar_one()
    )


def _older_than(column: ColumnElement[dt.datetime], seconds: float) -> ColumnElement[bool]:
    return column <= func.statement_timestamp() - seconds * _SECOND


def _has_input(kind: int, params: bytes) -> bool:
    message: job_pb2.ImageParams | job_pb2.VideoParams = (
        job_pb2.ImageParams() if kind == lifecycle.IMAGE else job_pb2.VideoParams()
    )
    message.ParseFromString(params)
    return message.HasField("input_image")


def due_inputs(
    conn: Connection, retention_seconds: float, limit: int
) -> list[tuple[uuid.UUID, bool]]:
    """The oldest finished jobs past the retention that are not marked yet, each with whether it
    has an input image."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.kind, jobs.c.params)
        .where(
            text(INPUT_UNSWEPT_PREDICATE),  # spelled as the index's predicate, which it uses
            _older_than(jobs.c.finished_at, retention_seconds),
        )
        .order_by(jobs.c.finished_at)
        .limit(limit)
    ).all()
    return [(row.id, _has_input(row.kind, row.params)) for row in rows]


def _delete_oldest(
    conn: Connection,
    table: Table,
    retention_seconds: float,
    limit: int,
    *conditions: ColumnElement[bool],
    joined: FromClause | None = None,
) -> int:
    """Deletes the oldest rows of `table` created before the retention that meet `conditions`
    (over `joined`, when they look at another table), at most `limit`; returns how many."""
    oldest = select(table.c.id)
    if joined is not None:
        oldest = oldest.select_from(joined)
    oldest = (
        oldest.where(_older_than(table.c.created_at, retention_seconds), *conditions)
        .order_by(table.c.created_at)
        .limit(limit)
    )
    return conn.execute(delete(table).where(table.c.id.in_(oldest))).rowcount


def expire_uploads(conn: Connection, grace_seconds: float, limit: int) -> int:
    """Deletes the records of uploads older than the grace (their URLs expired long before, and
    their objects go with the same grace); returns how many."""
    return _delete_oldest(conn, input_uploads, grace_seconds, limit)


def expire_notifications(conn: Connection, retention_seconds: float, limit: int) -> int:
    """Deletes the oldest notifications past the retention, at most `limit`; returns how many."""
    return _delete_oldest(conn, notifications, retention_seconds, limit)


def expire_deliveries(conn: Connection, retention_seconds: float, limit: int) -> int:
    """Deletes the oldest webhook deliveries past the retention that are no longer pending (with
    their attempts), at most `limit`; returns how many."""
    pending = webhook_service_pb2.DELIVERY_STATE_PENDING
    return _delete_oldest(
        conn, webhook_deliveries, retention_seconds, limit, webhook_deliveries.c.state != pending
    )


def expire_job_endpoints(conn: Connection, retention_seconds: float, limit: int) -> int:
    """Deletes one-off job endpoints created before the retention whose job has finished (with
    whatever deliveries they still have), at most `limit`; returns how many."""
    return _delete_oldest(
        conn,
        webhook_endpoints,
        retention_seconds,
        limit,
        webhook_endpoints.c.job_id.is_not(None),
        jobs.c.finished_at.is_not(None),
        joined=webhook_endpoints.join(jobs, jobs.c.id == webhook_endpoints.c.job_id),
    )


def _sealed_elsewhere(key_id: str) -> ColumnElement[bool]:
    """Endpoints whose secrets a key other than `key_id`'s sealed (or no one knows which): as
    two ranges, so that the index on sealed_with finds them however few among many."""
    column = webhook_endpoints.c.sealed_with
    return or_(column.is_(None), column < key_id, column > key_id)


@dataclass(frozen=True)
class SealedSecrets:
    """An endpoint's secrets as stored (sealed): the current one, and the previous one."""

    endpoint_id: uuid.UUID
    secret: str
    previous: str | None  # as the row holds it, expired or not
    previous_signs: bool  # not expired yet


@dataclass(frozen=True)
class Resealed:
    """The same secrets sealed with the first key (previous: None once it no longer signs)."""

    was: SealedSecrets
    secret: str
    previous: str | None


def secrets_to_reseal(
    conn: Connection, key_id: str, after: uuid.UUID | None, limit: int
) -> list[SealedSecrets]:
    """Up to `limit` endpoints sealed with another key, by ID after `after`."""
    e = webhook_endpoints.c
    live = e.previous_secret_expires_at > func.statement_timestamp()
    query = select(e.id, e.secret, e.previous_secret, live.label("live")).where(
        _sealed_elsewhere(key_id)
    )
    if after is not None:
        query = query.where(e.id > after)
    return [
        SealedSecrets(row.id, row.secret, row.previous_secret, bool(row.live))
        for row in conn.execute(query.order_by(e.id).limit(limit))
    ]


def store_resealed(conn: Connection, key_id: str, resealed: Sequence[Resealed]) -> None:
    """Stores each endpoint's secrets sealed again, unless a rotation changed them meanwhile;
    the sealed_with of those stored is `key_id`."""
    if not resealed:
        return
    e = webhook_endpoints.c
    conn.execute(
        update(webhook_endpoints)
        .where(
            e.id == bindparam("b_id"),
            e.secret == bindparam("b_was"),
            e.previous_secret.is_not_distinct_from(bindparam("b_was_previous")),
        )
        .values(
            secret=bindparam("b_secret"),
            previous_secret=bindparam("b_previous"),
            sealed_with=key_id,
        ),
        [
            {
                "b_id": each.was.endpoint_id,
                "b_was": each.was.secret,
                "b_was_previous": each.was.previous,
                "b_secret": each.secret,
                "b_previous": each.previous,
            }
            for each in resealed
        ],
    )


def count_to_reseal(conn: Connection, key_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(webhook_endpoints).where(_sealed_elsewhere(key_id))
        ).scalar_one()
    )


def mark_swept(conn: Connection, job_ids: Sequence[uuid.UUID]) -> None:
    if job_ids:
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(job_ids))
            .values(input_swept_at=func.statement_timestamp())
        )


def job_facts(
    conn: Connection, job_ids: Sequence[uuid.UUID], bucket: str, retention_seconds: float
) -> dict[uuid.UUID, JobFacts]:
    # Jobs before outputs: a job read as active keeps its current attempt's uploads, and a job
    # read as finished has its outputs recorded already (both are written in one transaction),
    # so no interleaving lets a recorded output look unrecorded.
    found = conn.execute(
        select(
            jobs.c.id,
            jobs.c.status,
            jobs.c.attempt,
            and_(
                jobs.c.finished_at.is_not(None),
                _older_than(jobs.c.finished_at, retention_seconds),
            ).label("input_due"),
        ).where(jobs.c.id.in_(job_ids))
    ).all()
    recorded: dict[uuid.UUID, set[str]] = defaultdict(set)
    for row in conn.execute(
        select(outputs.c.job_id, outputs.c.key).where(
            outputs.c.job_id.in_(job_ids), outputs.c.bucket == bucket
        )
    ):
        recorded[row.job_id].add(row.key)
    return {
        row.id: JobFacts(
            active=row.status in lifecycle.ACTIVE,
            attempt=row.attempt,
            input_due=bool(row.input_due),
            outputs=frozenset(recorded[row.id]),
        )
        for row in found
    }


def saved_cursor(conn: Connection, prefix: str) -> str:
    found = conn.execute(
        select(sweep_cursors.c.start_after).where(sweep_cursors.c.prefix == prefix)
    ).scalar_one_or_none()
    return found or ""


def save_cursor(conn: Connection, prefix: str, start_after: str) -> None:
    insert = pg_insert(sweep_cursors).values(
        prefix=prefix, start_after=start_after, updated_at=func.statement_timestamp()
    )
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[sweep_cursors.c.prefix],
            set_={
                "start_after": insert.excluded.start_after,
                "updated_at": insert.excluded.updated_at,
            },
        )
    )
