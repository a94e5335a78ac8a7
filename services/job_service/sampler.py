"""Reading job_service's gauges every few seconds, off the request path, and its readiness check
on Postgres.

It has its own single-connection engine and thread: under load every connection of the main pool
and every thread of the SQL bulkhead may be busy, and neither the gauges nor readiness may wait
behind CreateJob calls (a readiness check that times out because the service is busy would take
a loaded replica out of rotation). The thread is a one-thread bulkhead: a frozen Postgres holds
that one thread, later checks fail while it is stuck instead of queueing behind it, and it never
keeps the process from exiting. Two queries per round: active jobs by kind and status (an index
on queued and running jobs only keeps it small), and the outbox's size and oldest row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar, TypeVarTuple

from nats.aio.client import Client
from sqlalchemy import Engine, bindparam, case, create_engine, func, select, text

from services.common import jetstream, lifecycle
from services.common.bulkhead import Bulkhead
from services.common.tasks import every
from services.job_service import metrics
from services.job_service.schema import jobs, outbox

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_RUNNING = lifecycle.RUNNING

# Seconds since each active job entered its status: a queued job is not updated until it leaves
# QUEUED, so updated_at is when it entered; a running job's updated_at moves with progress, so
# started_at (its first claim) stands in.
_entered = case(
    (jobs.c.status == _RUNNING, func.coalesce(jobs.c.started_at, jobs.c.updated_at)),
    else_=jobs.c.updated_at,
)
_ACTIVE_JOBS = (
    select(
        jobs.c.kind,
        jobs.c.status,
        func.count(),
        func.extract("epoch", func.statement_timestamp() - func.min(_entered)),
    )
    .where(jobs.c.status.in_(lifecycle.ACTIVE))
    .group_by(jobs.c.kind, jobs.c.status)
)
# Rows this replica has published but not yet deleted are not backlog.
_OUTBOX = select(
    func.count(),
    func.extract("epoch", func.statement_timestamp() - func.min(outbox.c.created_at)),
).where(outbox.c.id.not_in(bindparam("published", expanding=True)))
_PING = text("SELECT 1")
_CALL_TIMEOUT_SECONDS = 10.0


def monitor_engine(database_url: str) -> Engine:
    return create_engine(
        database_url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 3,
            "options": "-c statement_timeout=5000",
            "application_name": "job_service-monitor",
        },
    )


class Sampler:
    def __init__(
        self,
        engine: Engine,
        nc: Client,
        *,
        interval_seconds: float,
        published_ids: Callable[[], Sequence[uuid.UUID]] = list,
    ) -> None:
        self._engine = engine
        self._published_ids = published_ids
        self._nc = nc
        self._js = nc.jetstream()
        self._interval = interval_seconds
        # Beyond the monitor connection's connect and statement timeouts: only a hang hits it.
        self._thread = Bulkhead("monitor", 1, _CALL_TIMEOUT_SECONDS)
        self._task: asyncio.Task[None] | None = None

    # --- readiness -----------------------------------------------------------------------

    async def postgres_ok(self) -> bool:
        await self._in_thread(self._ping)
        return True

    async def nats_ok(self) -> bool:
        return bool(self._nc.is_connected)

    def _ping(self) -> None:
        with self._engine.connect() as conn:
            conn.execute(_PING)

    # --- gauges --------------------------------------------------------------------------

    def start(self) -> None:
        # A failure is logged once per outage; readiness reports the outage itself.
        self._task = asyncio.create_task(
            every(self._interval, self.sample, "metrics sampling", log), name="metrics-sampler"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.shutdown()
        self._engine.dispose()

    async def sample(self) -> None:
        """One round: the database gauges, then the consumers' (NATS may be down alone)."""
        published = self._published_ids()
        active, (pending, lag) = await self._in_thread(self._read_database, published)
        for kind, kind_name in lifecycle.KIND_NAMES.items():
            depth = 0
            for status in lifecycle.ACTIVE:
                count, age = active.get((kind, status), (0, 0.0))
                metrics.OLDEST_AGE.labels(kind_name, metrics.status_label(status)).set(age)
                if status == lifecycle.QUEUED:
                    depth = count
            metrics.QUEUE_DEPTH.labels(kind_name).set(depth)
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_LAG.set(lag)
        await self._sample_consumers()

    def _read_database(
        self, published: Sequence[uuid.UUID]
    ) -> tuple[dict[tuple[int, int], tuple[int, float]], tuple[int, float]]:
        with self._engine.connect() as conn:
            active = {
                (row[0], row[1]): (int(row[2]), max(0.0, float(row[3] or 0)))
                for row in conn.execute(_ACTIVE_JOBS)
            }
            count, age = conn.execute(_OUTBOX, {"published": list(published)}).one()
        return active, (int(count), max(0.0, float(age or 0)))

    async def _sample_consumers(self) -> None:
        for kind in lifecycle.KINDS:
            try:
                info = await self._js.consumer_info(
                    jetstream.DISPATCH_STREAM, jetstream.worker_consumer(kind), timeout=2
                )
            except Exception as exc:
                # No such consumer until a worker of this kind has started once: nothing is
                # pending for it that KEDA could see either.
                log.debug("consumer info for %s unavailable: %s", kind, exc)
                continue
            pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
            metrics.CONSUMER_PENDING.labels(kind).set(pending)
        try:
            info = await self._js.consumer_info(
                jetstream.WEBHOOK_EVENTS_STREAM, jetstream.WEBHOOKS_CONSUMER, timeout=2
            )
        except Exception as exc:
            # None until a webhook sender has started once.
            log.debug("consumer info for webhooks unavailable: %s", exc)
            return
        pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
        metrics.WEBHOOK_EVENTS_PENDING.set(pending)

    async def _in_thread(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        return await self._thread.run(fn, *args)
