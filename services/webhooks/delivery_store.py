"""The sender's SQL: matching events to endpoints, the delivery queue (insert, claim, release) and
its gauges; recorder.py records the attempts. Every call runs in a SQL bulkhead of the sender's
own, one thread per connection, so a hung database holds those threads only and a call gives up
after DB_CALL_TIMEOUT_SECONDS.

The queue is webhook_deliveries: a PENDING row is due at next_attempt_at. A sender claims due rows
with FOR UPDATE SKIP LOCKED and pushes next_attempt_at past the time an attempt can take (the
lease), so replicas never take the same row, and a row whose sender died comes due again when its
lease lapses, to be sent by any replica with the same id (the webhook-id).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, func, text
from sqlalchemy.dialects.postgresql import insert

from services.common.bulkhead import Bulkhead
from services.common.ids import uuid7
from services.common.sealing import Sealer, Unsealable
from services.job_service.database import make_engine
from services.job_service.schema import DELIVERY_PENDING, webhook_deliveries
from services.webhooks import outcome

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """One JobEvent message, as the fan-out needs it."""

    event_id: uuid.UUID  # its Nats-Msg-Id
    event_type: str
    job_id: uuid.UUID
    owner: str
    kind: int
    version: int
    payload: bytes  # the serialized JobEvent


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    owner: str
    url: str
    secrets: tuple[str, ...]  # the newest first; two during a rotation's overlap
    enabled: bool = True


@dataclass(frozen=True)
class Match:
    """An event (its index in the batch) an endpoint is to be sent."""

    index: int
    endpoint: Endpoint


@dataclass(frozen=True)
class Delivery:
    """A delivery this replica holds the claim on, with what sending it needs."""

    id: uuid.UUID
    endpoint: Endpoint
    event_type: str
    event: bytes  # the serialized JobEvent
    attempts: int  # scheduled attempts made so far
    manual: bool  # asked for by RedeliverWebhook
    last_status: int | None = None  # of the latest attempt (None: none yet)
    last_error: str = ""


# Matching endpoints for a whole batch of events at once: the owner's enabled endpoints that
# want the event's type, of all kinds or the job's, or the job's own one-off endpoint.
_MATCH = text(
    """
    SELECT ev.idx, e.id, e.owner, e.url, e.secret,
           CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END
    FROM unnest(CAST(:owners AS text[]), CAST(:job_ids AS uuid[]), CAST(:types AS text[]),
                CAST(:kinds AS smallint[]))
         WITH ORDINALITY AS ev(owner, job_id, event_type, kind, idx)
    JOIN webhook_endpoints e
      ON e.owner = ev.owner AND e.enabled AND ev.event_type = ANY(e.event_types)
     AND (e.job_id = ev.job_id
          OR (e.job_id IS NULL AND (cardinality(e.kinds) = 0 OR ev.kind = ANY(e.kinds))))
    """
)

# Due deliveries up to `room`, at most `per_endpoint` in flight per endpoint and `per_user` per
# owner (counting what this replica already sends: busy_*), skipping endpoints and owners that are
# full; claimed by pushing their due time past the lease. Pending is spelled as
# webhook_deliveries_due's predicate (DELIVERY_PENDING), so that index serves the scan.
_CLAIM = text(
    f"""
    WITH candidates AS (
        SELECT d.id, d.endpoint_id, e.owner, d.next_attempt_at
        FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.{DELIVERY_PENDING} AND d.next_attempt_at <= now()
          AND NOT (d.endpoint_id = ANY(CAST(:full_ids AS uuid[])))
          AND NOT (e.owner = ANY(CAST(:full_owners AS text[])))
        ORDER BY d.next_attempt_at
        LIMIT :scan
        FOR UPDATE OF d SKIP LOCKED
    ), ranked AS (
        SELECT c.id, c.next_attempt_at,
               row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id)
                 + coalesce(b.busy, 0) AS slot,
               row_number() OVER (PARTITION BY c.owner ORDER BY c.next_attempt_at, c.id)
                 + coalesce(o.busy, 0) AS owner_slot
        FROM candidates c
        LEFT JOIN unnest(CAST(:busy_ids AS uuid[]), CAST(:busy_counts AS int[]))
               AS b(endpoint_id, busy) ON b.endpoint_id = c.endpoint_id
        LEFT JOIN unnest(CAST(:busy_owners AS text[]), CAST(:busy_owner_counts AS int[]))
               AS o(owner, busy) ON o.owner = c.owner
    ), chosen AS (
        SELECT id FROM ranked
        WHERE slot <= :per_endpoint AND owner_slot <= :per_user
        ORDER BY next_attempt_at LIMIT :room
    )
    UPDATE webhook_deliveries d
    SET next_attempt_at = now() + make_interval(secs => :lease), updated_at = now()
    FROM chosen, webhook_endpoints e
    WHERE d.id = chosen.id AND e.id = d.endpoint_id
    RETURNING d.id, d.event_type, d.event, d.attempts, d.manual,
              e.id, e.owner, e.url, e.secret,
              CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END,
              e.enabled,
              (SELECT a.status_code FROM webhook_attempts a
                WHERE a.delivery_id = d.id ORDER BY a.id DESC LIMIT 1),
              (SELECT a.error FROM webhook_attempts a
                WHERE a.delivery_id = d.id ORDER BY a.id DESC LIMIT 1)
    """
)

_RELEASE = text(
    "UPDATE webhook_deliveries SET next_attempt_at = now() "
    f"WHERE id = ANY(CAST(:ids AS uuid[])) AND {DELIVERY_PENDING}"
)
_GAUGES = text(
    f"""
    SELECT count(*) FILTER (WHERE attempts > 0),
           coalesce(extract(epoch FROM now() - min(next_attempt_at)
                                        FILTER (WHERE next_attempt_at <= now())), 0)
    FROM webhook_deliveries WHERE {DELIVERY_PENDING}
    """
)


def _secrets(sealer: Sealer, secret: str, previous: str | None) -> tuple[str, ...]:
    """The endpoint's signing secrets, opened: none when no configured key opens the current
    one (the attempt then fails without a request, and says why); a previous one that no key
    opens any more is left out."""
    try:
        current = sealer.open(secret)
    except Unsealable as exc:
        log.error("a webhook endpoint's secret cannot be opened: %s", exc)
        return ()
    if previous:
        try:
            return current, sealer.open(previous)
        except Unsealable:
            log.warning(
                "a webhook endpoint's previous secret cannot be opened; not signing with it"
            )
    return (current,)


class DeliveryStore:
    def __init__(self, engine: Engine, bulkhead: Bulkhead, sealer: Sealer) -> None:
        self._engine = engine
        self._bulkhead = bulkhead
        self._sealer = sealer

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def bulkhead(self) -> Bulkhead:
        return self._bulkhead

    @classmethod
    def open(
        cls, database_url: str, pool_size: int, call_timeout_seconds: float, sealer: Sealer
    ) -> DeliveryStore:
        engine = make_engine(
            database_url,
            pool_size,
            statement_timeout_seconds=call_timeout_seconds,
            application_name="webhooks",
        )
        return cls(engine, Bulkhead("sql", pool_size, call_timeout_seconds), sealer)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._bulkhead.run(fn, *args, **kwargs)

    def close(self) -> None:
        self._bulkhead.shutdown()
        self._engine.dispose()

    # --- fan-out ---------------------------------------------------------------------------

    async def match(self, events: Sequence[Event]) -> list[Match]:
        """Every (event, endpoint) pair to deliver, in one query for the whole batch."""
        return await self._run(self._match, events)

    def _match(self, events: Sequence[Event]) -> list[Match]:
        params = {
            "owners": [e.owner for e in events],
            "job_ids": [str(e.job_id) for e in events],
            "types": [e.event_type for e in events],
            "kinds": [e.kind for e in events],
        }
        with self._engine.connect() as conn:
            rows = conn.execute(_MATCH, params).all()
        return [
            Match(int(r[0]) - 1, Endpoint(r[1], r[2], r[3], _secrets(self._sealer, r[4], r[5])))
            for r in rows
        ]

    async def insert(
        self,
        events: Sequence[Event],
        matches: Sequence[Match],
        claimed: Sequence[bool],
        lease: float,
    ) -> dict[int, uuid.UUID]:
        """Inserts a PENDING delivery per match (nothing for a pair that has one already: an
        event NATS delivered again). A `claimed` one is due after the lease (this replica sends
        it now), the others at once (the poll, of any replica, sends them). Returns the new
        rows' ids by the match's position."""
        return await self._run(self._insert, events, matches, claimed, lease)

    def _insert(
        self,
        events: Sequence[Event],
        matches: Sequence[Match],
        claimed: Sequence[bool],
        lease: float,
    ) -> dict[int, uuid.UUID]:
        if not matches:
            return {}
        ids = [uuid7() for _ in matches]
        rows: list[dict[str, Any]] = []
        for delivery_id, match, mine in zip(ids, matches, claimed, strict=True):
            event = events[match.index]
            rows.append(
                {
                    "id": delivery_id,
                    "endpoint_id": match.endpoint.id,
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "job_id": event.job_id,
                    "job_version": event.version,
                    "event": event.payload,
                    "state": outcome.PENDING,
                    "next_attempt_at": func.now() + timedelta(seconds=lease if mine else 0),
                }
            )
        statement = (
            insert(webhook_deliveries)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
            .returning(webhook_deliveries.c.id)
        )
        with self._engine.begin() as conn:
            inserted = {row[0] for row in conn.execute(statement)}
        return {i: delivery_id for i, delivery_id in enumerate(ids) if delivery_id in inserted}

    # --- the queue -------------------------------------------------------------------------

    async def claim(
        self,
        room: int,
        per_endpoint: int,
        per_user: int,
        busy: Mapping[uuid.UUID, int],
        busy_users: Mapping[str, int],
        lease: float,
    ) -> list[Delivery]:
        return await self._run(
            self._claim, room, per_endpoint, per_user, dict(busy), dict(busy_users), lease
        )

    def _claim(
        self,
        room: int,
        per_endpoint: int,
        per_user: int,
        busy: dict[uuid.UUID, int],
        busy_users: dict[str, int],
        lease: float,
    ) -> list[Delivery]:
        params = {
            "full_ids": [str(e) for e, n in busy.items() if n >= per_endpoint],
            "full_owners": [u for u, n in busy_users.items() if n >= per_user],
            "busy_ids": [str(e) for e in busy],
            "busy_counts": list(busy.values()),
            "busy_owners": list(busy_users),
            "busy_owner_counts": list(busy_users.values()),
            "per_user": per_user,
            # Rows of full endpoints are skipped in the scan; a few times the room still lets
            # one endpoint's backlog leave room for the others.
            "scan": 4 * room,
            "per_endpoint": per_endpoint,
            "room": room,
            "lease": lease,
        }
        with self._engine.begin() as conn:
            rows = conn.execute(_CLAIM, params).all()
        return [
            Delivery(
                id=r[0],
                event_type=r[1],
                event=bytes(r[2]),
                attempts=r[3],
                manual=r[4],
                endpoint=Endpoint(
                    r[5], r[6], r[7], _secrets(self._sealer, r[8], r[9]), enabled=r[10]
                ),
                last_status=r[11],
                last_error=r[12] or "",
            )
            for r in rows
        ]

    async def release(self, ids: Sequence[uuid.UUID]) -> None:
        """Claims given back unsent: due at once, for any replica."""
        if ids:
            await self._run(self._release, [str(i) for i in ids])

    def _release(self, ids: list[str]) -> None:
        with self._engine.begin() as conn:
            conn.execute(_RELEASE, {"ids": ids})

    # --- gauges and readiness ---------------------------------------------------------------

    async def gauges(self) -> tuple[int, float]:
        """(pending deliveries that failed at least once, seconds the oldest due one waits)."""
        return await self._run(self._gauges)

    def _gauges(self) -> tuple[int, float]:
        with self._engine.connect() as conn:
            row = conn.execute(_GAUGES).one()
        return int(row[0]), float(row[1])


class DatabaseProbe:
    """Readiness: a `SELECT 1` on a connection and a thread of its own, so a busy queue does not
    read as a database outage."""

    def __init__(self, database_url: str, timeout_seconds: float) -> None:
        self._engine = make_engine(
            database_url,
            1,
            statement_timeout_seconds=timeout_seconds,
            application_name="webhooks-monitor",
        )
        self._bulkhead = Bulkhead("sql-probe", 1, timeout_seconds)

    async def __call__(self) -> bool:
        await self._bulkhead.run(self._ping)
        return True

    def _ping(self) -> None:
        with self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self._bulkhead.shutdown()
        self._engine.dispose()
