"""The sender's SQL: matching events to endpoints, the delivery queue (insert, claim, record) and
its gauges. Every call runs in a SQL bulkhead of the sender's own, one thread per connection, so a
hung database holds those threads only and a call gives up after DB_CALL_TIMEOUT_SECONDS.

The queue is webhook_deliveries: a PENDING row is due at next_attempt_at. A sender claims due rows
with FOR UPDATE SKIP LOCKED and pushes next_attempt_at past the time an attempt can take (the
lease), so replicas never take the same row, and a row whose sender died comes due again when its
lease lapses, to be sent by any replica with the same id (the webhook-id).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError

from services.common.bulkhead import Bulkhead
from services.common.ids import uuid7
from services.job_service.database import make_engine
from services.job_service.schema import webhook_deliveries
from services.webhooks import outcome
from services.webhooks.outcome import Decision, Result

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


@dataclass(frozen=True)
class Attempt:
    """One attempt to record."""

    delivery: Delivery
    result: Result
    started_at: datetime
    latency_ms: int
    response_head: str


@dataclass(frozen=True)
class Recorded:
    decision: Decision
    disabled_now: bool  # this call disabled the endpoint (not another replica before it)


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
# full; claimed by pushing their due time past the lease. `state = 1` is spelled as
# webhook_deliveries_due's predicate (DELIVERY_PENDING), so that index serves the scan.
_CLAIM = text(
    """
    WITH candidates AS (
        SELECT d.id, d.endpoint_id, e.owner, d.next_attempt_at
        FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.state = 1 AND d.next_attempt_at <= now()
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

_MARK_FAILING = text(
    "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, :at) "
    "WHERE id = :id RETURNING failing_since"
)
_CLEAR_FAILING = text(
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id AND failing_since IS NOT NULL"
)
_FAILING_SINCE = text("SELECT failing_since FROM webhook_endpoints WHERE id = :id")
_DISABLE = text(
    "UPDATE webhook_endpoints SET enabled = false, disabled_reason = :reason, "
    "disabled_at = now(), updated_at = now() WHERE id = :id AND enabled RETURNING id"
)
_ADD_ATTEMPT = text(
    """
    INSERT INTO webhook_attempts
        (delivery_id, number, started_at, status_code, latency_ms, response_head, error, manual)
    SELECT :id, coalesce(max(number), 0) + 1, :started, :status, :latency_ms, :head, :error,
           :manual
    FROM webhook_attempts WHERE delivery_id = :id
    """
)
_UPDATE_DELIVERY = text(
    """
    UPDATE webhook_deliveries
    SET state = :state, attempts = :attempts, manual = false, updated_at = now(),
        next_attempt_at = CASE WHEN :retry_in IS NULL THEN NULL
                               ELSE now() + make_interval(secs => :retry_in) END
    WHERE id = :id
    """
)
# The successes of a batch, set-based: their attempt rows, their deliveries SUCCEEDED, and their
# endpoints' failing streaks ended.
_ADD_SUCCESSES = text(
    """
    INSERT INTO webhook_attempts
        (delivery_id, number, started_at, status_code, latency_ms, response_head, error, manual)
    SELECT u.id,
           coalesce((SELECT max(a.number) FROM webhook_attempts a WHERE a.delivery_id = u.id), 0)
             + 1,
           u.started, u.status, u.latency_ms, u.head, '', u.manual
    FROM unnest(CAST(:ids AS uuid[]), CAST(:started AS timestamptz[]), CAST(:status AS int[]),
                CAST(:latency_ms AS int[]), CAST(:heads AS text[]), CAST(:manual AS boolean[]))
         AS u(id, started, status, latency_ms, head, manual)
    """
)
_SUCCEED_DELIVERIES = text(
    """
    UPDATE webhook_deliveries d
    SET state = :state, attempts = u.attempts, manual = false, updated_at = now(),
        next_attempt_at = NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS u(id, attempts)
    WHERE d.id = u.id
    """
)
_CLEAR_FAILING_MANY = text(
    "UPDATE webhook_endpoints SET failing_since = NULL "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND failing_since IS NOT NULL"
)
_DEADLOCK = "40P01"
# Attempts recorded in one transaction at most.
RECORD_BATCH = 256
_RELEASE = text(
    "UPDATE webhook_deliveries SET next_attempt_at = now() "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND state = 1"
)
_GAUGES = text(
    """
    SELECT count(*) FILTER (WHERE attempts > 0),
           coalesce(extract(epoch FROM now() - min(next_attempt_at)
                                        FILTER (WHERE next_attempt_at <= now())), 0)
    FROM webhook_deliveries WHERE state = 1
    """
)


def _secrets(secret: str, previous: str | None) -> tuple[str, ...]:
    return (secret, previous) if previous else (secret,)


Decide = Callable[[Delivery, Result, datetime | None, datetime], Decision]


class DeliveryStore:
    def __init__(self, engine: Engine, bulkhead: Bulkhead) -> None:
        self._engine = engine
        self._bulkhead = bulkhead
        self._to_record: list[tuple[Attempt, Decide, asyncio.Future[Recorded]]] = []
        self._recording: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, database_url: str, pool_size: int, call_timeout_seconds: float) -> DeliveryStore:
        engine = make_engine(
            database_url,
            pool_size,
            statement_timeout_seconds=call_timeout_seconds,
            application_name="webhooks",
        )
        return cls(engine, Bulkhead("sql", pool_size, call_timeout_seconds))

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
            Match(int(r[0]) - 1, Endpoint(r[1], r[2], r[3], _secrets(r[4], r[5]))) for r in rows
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
                endpoint=Endpoint(r[5], r[6], r[7], _secrets(r[8], r[9]), enabled=r[10]),
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

    async def record(self, attempt: Attempt, decide: Decide) -> Recorded:
        """Records an attempt: the endpoint's failing streak, what the attempt does (`decide`,
        given that streak and the database's clock), the attempt row, the delivery's new state,
        and the endpoint disabled when so decided.

        Group commit: one transaction runs at a time and takes every attempt that finished
        meanwhile, successes in three set-based statements, so recording costs a commit per batch
        rather than per delivery (it was what limited deliveries per second)."""
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._to_record.append((attempt, decide, future))
        if self._recording is None:
            self._recording = asyncio.create_task(self._record_all())
        return await asyncio.shield(future)  # a cancelled caller leaves its attempt to the batch

    async def _record_all(self) -> None:
        try:
            while self._to_record:
                batch = self._to_record[:RECORD_BATCH]
                del self._to_record[:RECORD_BATCH]
                try:
                    results = await self._run(self._record_batch, [(a, d) for a, d, _ in batch])
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._recording = None

    def _record_batch(self, batch: list[tuple[Attempt, Decide]]) -> list[Recorded]:
        try:
            return self._record_once(batch)
        except DBAPIError as exc:
            # Two replicas' batches can lock the same endpoints in another order; Postgres
            # aborts one of them, which then simply runs again.
            if getattr(exc.orig, "pgcode", None) != _DEADLOCK:
                raise
            return self._record_once(batch)

    def _record_once(self, batch: list[tuple[Attempt, Decide]]) -> list[Recorded]:
        results: dict[int, Recorded] = {}
        with self._engine.begin() as conn:
            now: datetime = conn.execute(text("SELECT now()")).scalar_one()
            ok = [a.result.ok and a.delivery.endpoint.enabled for a, _ in batch]
            successes = [i for i in range(len(batch)) if ok[i]]
            # The rest one by one, in endpoint order: the same order in every replica.
            others = sorted(
                (i for i in range(len(batch)) if not ok[i]),
                key=lambda i: batch[i][0].delivery.endpoint.id,
            )
            for i in others:
                results[i] = self._record_one(conn, *batch[i], now)
            for i in successes:
                attempt, decide = batch[i]
                results[i] = Recorded(decide(attempt.delivery, attempt.result, None, now), False)
            if successes:
                self._record_successes(conn, [(batch[i][0], results[i]) for i in successes])
        return [results[i] for i in range(len(batch))]

    @staticmethod
    def _record_successes(conn: Connection, done: list[tuple[Attempt, Recorded]]) -> None:
        attempts = [a for a, _ in done]
        conn.execute(
            _CLEAR_FAILING_MANY,
            {"ids": sorted({str(a.delivery.endpoint.id) for a in attempts})},
        )
        conn.execute(
            _ADD_SUCCESSES,
            {
                "ids": [str(a.delivery.id) for a in attempts],
                "started": [a.started_at for a in attempts],
                "status": [a.result.status_code for a in attempts],
                "latency_ms": [a.latency_ms for a in attempts],
                "heads": [a.response_head for a in attempts],
                "manual": [a.delivery.manual for a in attempts],
            },
        )
        conn.execute(
            _SUCCEED_DELIVERIES,
            {
                "state": outcome.SUCCEEDED,
                "ids": [str(a.delivery.id) for a, _ in done],
                "attempts": [r.decision.attempts for _, r in done],
            },
        )

    def _record_one(
        self, conn: Connection, attempt: Attempt, decide: Decide, now: datetime
    ) -> Recorded:
        delivery, result = attempt.delivery, attempt.result
        endpoint_id = delivery.endpoint.id
        failing_since = self._streak(conn, endpoint_id, result, attempt.started_at, delivery)
        decision = decide(delivery, result, failing_since, now)
        disabled_now = False
        if decision.disable is not None:
            disabled_now = (
                conn.execute(
                    _DISABLE, {"id": endpoint_id, "reason": decision.disabled_reason}
                ).first()
                is not None
            )
        conn.execute(
            _ADD_ATTEMPT,
            {
                "id": delivery.id,
                "started": attempt.started_at,
                "status": result.status_code,
                "latency_ms": attempt.latency_ms,
                "head": attempt.response_head,
                "error": result.error,
                "manual": delivery.manual,
            },
        )
        conn.execute(
            _UPDATE_DELIVERY,
            {
                "id": delivery.id,
                "state": decision.state,
                "attempts": decision.attempts,
                "retry_in": decision.retry_in_seconds,
            },
        )
        return Recorded(decision, disabled_now)

    @staticmethod
    def _streak(
        conn: Connection,
        endpoint_id: uuid.UUID,
        result: Result,
        started_at: datetime,
        delivery: Delivery,
    ) -> datetime | None:
        """The endpoint's failing_since after this attempt."""
        if not delivery.endpoint.enabled:
            return None
        if result.ok:
            conn.execute(_CLEAR_FAILING, {"id": endpoint_id})
            return None
        if not result.receiver_fault:
            since: datetime | None = conn.execute(_FAILING_SINCE, {"id": endpoint_id}).scalar()
            return since
        marked: datetime | None = conn.execute(
            _MARK_FAILING, {"id": endpoint_id, "at": started_at}
        ).scalar()
        return marked

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
