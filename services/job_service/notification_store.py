"""The notifications table: the row a finished job leaves its owner (written in the store's
transaction that finished the job), and the inbox's reads and marks. Blocking: the servicer runs
these through database.call."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, insert, select, update

from media.v1 import job_pb2, notifications_pb2
from services.common import lifecycle
from services.common.ids import uuid7
from services.job_service import notices
from services.job_service.records import to_notification
from services.job_service.schema import notifications


def write_notification(
    conn: Connection, owner: str, job: job_pb2.Job, event_type: lifecycle.EventType
) -> notifications_pb2.Notification | None:
    """Inserts the notification a job that just finished leaves its owner (None: the job is not
    finished), in the caller's transaction."""
    notice = notices.notice(job)
    if notice is None:
        return None
    row = conn.execute(
        insert(notifications)
        .values(
            id=uuid7(),
            owner=owner,
            job_id=uuid.UUID(job.id),
            type=str(event_type),
            title=notice.title,
            message=notice.message,
            created_at=func.statement_timestamp(),
        )
        .returning(notifications)
    ).one()
    return to_notification(row)


@dataclass(frozen=True)
class Marked:
    marked: int
    unread: int
    missing: uuid.UUID | None = None  # an ID that is not one of the owner's (nothing marked)


class NotificationStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def list_notifications(
        self, owner: str, *, limit: int, before: uuid.UUID | None, unread_only: bool
    ) -> tuple[list[notifications_pb2.Notification], int]:
        """The owner's notifications newest first (keyset-paginated by `before`), and how many of
        all of theirs are unread."""
        query = select(notifications).where(notifications.c.owner == owner)
        if before is not None:
            query = query.where(notifications.c.id < before)
        if unread_only:
            query = query.where(notifications.c.read_at.is_(None))
        query = query.order_by(notifications.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            return [to_notification(row) for row in rows], _unread(conn, owner)

    def mark_read(self, owner: str, ids: Sequence[uuid.UUID] | None) -> Marked:
        """Marks the owner's notifications `ids` read (None: all of them). Any ID that is not the
        owner's marks nothing and is returned as missing."""
        with self._engine.begin() as conn:
            query = (
                update(notifications)
                .where(notifications.c.owner == owner, notifications.c.read_at.is_(None))
                .values(read_at=func.statement_timestamp())
            )
            if ids is not None:
                found = set(
                    conn.execute(
                        select(notifications.c.id).where(
                            notifications.c.owner == owner, notifications.c.id.in_(ids)
                        )
                    ).scalars()
                )
                missing = next((i for i in ids if i not in found), None)
                if missing is not None:
                    return Marked(0, 0, missing)
                query = query.where(notifications.c.id.in_(ids))
            marked = conn.execute(query).rowcount
            return Marked(marked, _unread(conn, owner))


def _unread(conn: Connection, owner: str) -> int:
    # The partial index notifications_owner_unread holds exactly these rows.
    return int(
        conn.execute(
            select(func.count()).where(
                notifications.c.owner == owner, notifications.c.read_at.is_(None)
            )
        ).scalar_one()
    )
