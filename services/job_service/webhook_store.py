"""The webhook tables as WebhookService writes and reads them: endpoints (the owner's, and the
one-off endpoints CreateJob writes with a job), and their deliveries with their attempts (which
the webhook sender writes; job_service only lists them and asks for a redelivery). Every query
names the owner, so another user's endpoint is never seen. Blocking: the servicer runs these
through database.call."""

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
    Row,
    case,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)

from media.v1 import webhook_service_pb2
from services.job_service.records import to_delivery, to_endpoint
from services.job_service.schema import webhook_attempts, webhook_deliveries, webhook_endpoints

DISABLED_BY_OWNER = "disabled by the owner"
_SECOND: ColumnElement[dt.timedelta] = literal_column("interval '1 second'")
# Everything of an endpoint row but its secrets, which are read only where they are minted.
_SHOWN = [
    c for c in webhook_endpoints.c if c.name not in {"secret", "previous_secret", "sealed_with"}
]
_LOCK_OWNER = text("SELECT pg_advisory_xact_lock(hashtextextended('webhook-endpoints:' || :o, 0))")


@dataclass(frozen=True)
class NewEndpoint:
    id: uuid.UUID
    owner: str
    url: str
    event_types: tuple[str, ...]
    secret: str  # for the caller's answer, once
    sealed_secret: str  # what is stored (services/common/sealing.py)
    sealed_with: str  # the sealing key's key_id
    kinds: tuple[int, ...] = ()
    description: str = ""
    job_id: uuid.UUID | None = None  # a one-off endpoint of this job


@dataclass(frozen=True)
class EndpointChanges:
    """What UpdateWebhookEndpoint sets (None: left as it is)."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    kinds: tuple[int, ...] | None = None
    description: str | None = None
    enabled: bool | None = None


class TooManyEndpoints(Exception):
    """The owner has max_endpoints endpoints already (one-off job endpoints do not count)."""


class EndpointDisabled(Exception):
    """A redelivery was asked of a disabled endpoint."""


def write_endpoints(conn: Connection, endpoints: Sequence[NewEndpoint]) -> None:
    """Inserts endpoints in the caller's transaction (one statement however many)."""
    if endpoints:
        conn.execute(insert(webhook_endpoints), [_values(e) for e in endpoints])


def _values(new: NewEndpoint) -> dict[str, object]:
    return {
        "id": new.id,
        "owner": new.owner,
        "url": new.url,
        "event_types": list(new.event_types),
        "kinds": list(new.kinds),
        "description": new.description,
        "secret": new.sealed_secret,
        "sealed_with": new.sealed_with,
        "job_id": new.job_id,
    }


def _now() -> ColumnElement[dt.datetime]:
    return func.statement_timestamp()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _mine(owner: str, endpoint_id: uuid.UUID) -> ColumnElement[bool]:
    return (webhook_endpoints.c.id == endpoint_id) & (webhook_endpoints.c.owner == owner)


class WebhookStore:
    def __init__(self, engine: Engine, *, max_endpoints: int, overlap_seconds: float) -> None:
        self._engine = engine
        self._max_endpoints = max_endpoints
        self._overlap_seconds = overlap_seconds

    # --- endpoints -------------------------------------------------------------------------

    def create(self, new: NewEndpoint) -> webhook_service_pb2.WebhookEndpoint:
        """Raises TooManyEndpoints when the owner has max_endpoints already. A lock per owner
        serializes concurrent creates (other replicas too), so the cap is exact."""
        with self._engine.begin() as conn:
            conn.execute(_LOCK_OWNER, {"o": new.owner})
            count = conn.execute(
                select(func.count()).where(
                    webhook_endpoints.c.owner == new.owner, webhook_endpoints.c.job_id.is_(None)
                )
            ).scalar_one()
            if count >= self._max_endpoints:
                raise TooManyEndpoints
            row = conn.execute(
                insert(webhook_endpoints).values(**_values(new)).returning(*_SHOWN)
            ).one()
        return to_endpoint(row, _utcnow())

    def list_endpoints(
        self, owner: str, *, limit: int, before: uuid.UUID | None
    ) -> list[webhook_service_pb2.WebhookEndpoint]:
        query = select(*_SHOWN).where(webhook_endpoints.c.owner == owner)
        if before is not None:
            query = query.where(webhook_endpoints.c.id < before)
        query = query.order_by(webhook_endpoints.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        now = _utcnow()
        return [to_endpoint(row, now) for row in rows]

    def get(self, owner: str, endpoint_id: uuid.UUID) -> webhook_service_pb2.WebhookEndpoint | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(*_SHOWN).where(_mine(owner, endpoint_id))).first()
        return None if row is None else to_endpoint(row, _utcnow())

    def update(
        self, owner: str, endpoint_id: uuid.UUID, changes: EndpointChanges
    ) -> webhook_service_pb2.WebhookEndpoint | None:
        values: dict[str, object] = {"updated_at": _now()}
        for name in ("url", "description"):
            if getattr(changes, name) is not None:
                values[name] = getattr(changes, name)
        if changes.event_types is not None:
            values["event_types"] = list(changes.event_types)
        if changes.kinds is not None:
            values["kinds"] = list(changes.kinds)
        if changes.enabled:
            # Re-enabled: its failures so far no longer count towards disabling it again.
            values |= {"enabled": True, "disabled_reason": "", "disabled_at": None}
            values["failing_since"] = None
        elif changes.enabled is False:
            # An endpoint disabled already keeps its reason (410 Gone, failing since ...).
            was = webhook_endpoints.c.enabled
            values |= {
                "enabled": False,
                "disabled_reason": case(
                    (was, DISABLED_BY_OWNER), else_=webhook_endpoints.c.disabled_reason
                ),
                "disabled_at": case((was, _now()), else_=webhook_endpoints.c.disabled_at),
            }
        with self._engine.begin() as conn:
            row = conn.execute(
                update(webhook_endpoints)
                .where(_mine(owner, endpoint_id))
                .values(**values)
                .returning(*_SHOWN)
            ).first()
        return None if row is None else to_endpoint(row, _utcnow())

    def delete(self, owner: str, endpoint_id: uuid.UUID) -> bool:
        """Deletes the endpoint and (by cascade) its deliveries; False: no such endpoint."""
        with self._engine.begin() as conn:
            deleted = conn.execute(delete(webhook_endpoints).where(_mine(owner, endpoint_id)))
            return bool(deleted.rowcount)

    def rotate(
        self, owner: str, endpoint_id: uuid.UUID, secret: str, sealed_with: str
    ) -> webhook_service_pb2.WebhookEndpoint | None:
        """`secret` (sealed with the key `sealed_with` names) signs from now on; the one it
        replaces also signs for the overlap."""
        column = webhook_endpoints.c.sealed_with
        with self._engine.begin() as conn:
            row = conn.execute(
                update(webhook_endpoints)
                .where(_mine(owner, endpoint_id))
                .values(
                    previous_secret=webhook_endpoints.c.secret,
                    previous_secret_expires_at=_now() + self._overlap_seconds * _SECOND,
                    secret=secret,
                    # Both secrets under one key, or unknown (NULL): the sweeper reseals both.
                    sealed_with=case((column == sealed_with, column), else_=None),
                    updated_at=_now(),
                )
                .returning(*_SHOWN)
            ).first()
        return None if row is None else to_endpoint(row, _utcnow())

    # --- deliveries ------------------------------------------------------------------------

    def deliveries(
        self,
        owner: str,
        endpoint_id: uuid.UUID,
        *,
        limit: int,
        before: uuid.UUID | None,
        state: int,
    ) -> list[webhook_service_pb2.WebhookDelivery] | None:
        """The endpoint's deliveries newest first, each with its attempts oldest first (None: no
        such endpoint of the owner's)."""
        query = select(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
        if before is not None:
            query = query.where(webhook_deliveries.c.id < before)
        if state:
            query = query.where(webhook_deliveries.c.state == state)
        query = query.order_by(webhook_deliveries.c.id.desc()).limit(limit)
        # One snapshot for the deliveries and their attempts: under READ COMMITTED each statement
        # has its own, and an attempt recorded between the two read as a PENDING delivery with a
        # 2xx attempt.
        with self._engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            if (
                conn.execute(
                    select(webhook_endpoints.c.id).where(_mine(owner, endpoint_id))
                ).first()
                is None
            ):
                return None
            rows = conn.execute(query).all()
            return _with_attempts(conn, rows)

    def redeliver(
        self, owner: str, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> webhook_service_pb2.WebhookDelivery | None:
        """Makes the delivery due now, as a manual attempt (None: no such delivery of the owner's
        endpoint). Raises EndpointDisabled when the endpoint is disabled."""
        with self._engine.begin() as conn:
            enabled = conn.execute(
                select(webhook_endpoints.c.enabled).where(_mine(owner, endpoint_id))
            ).scalar_one_or_none()
            if enabled is None:
                return None
            if not enabled:
                raise EndpointDisabled
            row = conn.execute(
                update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.id == delivery_id,
                    webhook_deliveries.c.endpoint_id == endpoint_id,
                )
                .values(
                    state=webhook_service_pb2.DELIVERY_STATE_PENDING,
                    next_attempt_at=_now(),
                    manual=True,
                    updated_at=_now(),
                )
                .returning(webhook_deliveries)
            ).first()
            return None if row is None else _with_attempts(conn, [row])[0]


def _with_attempts(
    conn: Connection, rows: Sequence[Row[tuple[object, ...]]]
) -> list[webhook_service_pb2.WebhookDelivery]:
    found: dict[uuid.UUID, list[Row[tuple[object, ...]]]] = defaultdict(list)
    if rows:
        for attempt in conn.execute(
            select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id.in_([row.id for row in rows]))
            .order_by(webhook_attempts.c.id)
        ):
            found[attempt.delivery_id].append(attempt)
    return [to_delivery(row, found.get(row.id, ())) for row in rows]
