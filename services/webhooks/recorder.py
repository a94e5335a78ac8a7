"""Recording attempts: the attempt row, the delivery's new state, the endpoint's failing streak and
its disabling, all in one transaction with what the attempt's outcome (outcome.py) decides.

Group commit: one transaction runs at a time and takes every attempt that finished meanwhile,
successes in three set-based statements, so recording costs a commit per batch rather than per
delivery (it was what limited deliveries per second). Failures are recorded one by one, in
endpoint order, the same in every replica; a batch that still deadlocks with another replica's
runs again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from services.common.bulkhead import Bulkhead
from services.webhooks import outcome
from services.webhooks.delivery_store import Delivery
from services.webhooks.outcome import Decision, Result


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


Decide = Callable[[Delivery, Result, datetime | None, datetime], Decision]

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


class Recorder:
    """Shares the delivery store's engine and SQL bulkhead: one database, one pool."""

    def __init__(self, engine: Engine, bulkhead: Bulkhead) -> None:
        self._engine = engine
        self._bulkhead = bulkhead
        self._to_record: list[tuple[Attempt, Decide, asyncio.Future[Recorded]]] = []
        self._recording: asyncio.Task[None] | None = None

    async def record(self, attempt: Attempt, decide: Decide) -> Recorded:
        """Records an attempt: the endpoint's failing streak, what the attempt does (`decide`,
        given that streak and the database's clock), the attempt row, the delivery's new state,
        and the endpoint disabled when so decided (in the batch the running one leaves)."""
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
                    results = await self._bulkhead.run(
                        self._record_batch, [(a, d) for a, d, _ in batch]
                    )
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
