"""What the fault tests share: short settings, and ways to look at every layer of one stack
(the API, the database, the object store, the JetStream streams and the workers' logs)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.api import DeliverPolicy
from sqlalchemy import create_engine, text

from devstack.deps import Dependencies
from devstack.services import USER_LIMITS_OFF, ServiceProcess, Services
from media.v1 import events_pb2, job_pb2, job_service_pb2, notifier_service_pb2
from services.common import jetstream
from services.common.lifecycle import FINISHED, RUNNING
from tests.conftest import Clients

T = TypeVar("T")

# Short leases, polls and back-offs, so that a fault plays out in seconds. Never a statement
# about how fast anything must be: the tests wait for states, with WAIT_SECONDS as hang guard.
FAULT_ENV = {
    "ACK_WAIT_SECONDS": "3",
    "OUTBOX_POLL_SECONDS": "0.5",
    "MAX_ATTEMPTS": "3",
    "RETRY_BASE_DELAY_SECONDS": "0.2",
    "RETRY_MAX_DELAY_SECONDS": "1",
    "UPLOAD_ATTEMPTS": "2",
    "FETCH_TIMEOUT_SECONDS": "1",
    "RPC_TIMEOUT_SECONDS": "5",
    "READINESS_CHECK_SECONDS": "0.5",
    "NOTIFIER_IDLE_HEARTBEAT_SECONDS": "1",
    "WORKER_CONCURRENCY": "2",
    "SHUTDOWN_GRACE_SECONDS": "5",
    "BLOCKING_THREADS": "8",
    "DB_POOL_SIZE": "8",
    # Jobs are created back to back as one user, many left stuck by a fault: per-user limits off
    # (they are not what these tests are about).
    **USER_LIMITS_OFF,
}
WAIT_SECONDS = 150.0
CANCELED = job_pb2.JOB_STATUS_CANCELED
# Long enough that a fault reliably lands in the middle of it (several seconds of encoding).
LONG_VIDEO = job_pb2.VideoParams(prompt="a long take", duration_seconds=8, number_of_videos=2)
SMALL_IMAGE = job_pb2.ImageParams(prompt="small", size="256x256")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, limit_seconds: float = WAIT_SECONDS
) -> T:
    """Polls `probe` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + limit_seconds
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {limit_seconds:.0f} s")
        await asyncio.sleep(0.05)


def log_records(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


class FaultStack:
    """One module's own stack, and views into it."""

    def __init__(self, deps: Dependencies, services: Services, secret: str, run_dir: Path):
        self.deps = deps
        self.services = services
        self.secret = secret
        self.run_dir = run_dir
        self.clients = Clients(services, secret)
        self.user = self.clients.alice
        self.engine = create_engine(
            deps.database_url, pool_pre_ping=True, connect_args={"connect_timeout": 3}
        )
        self.s3 = deps.s3_client()

    async def close(self) -> None:
        await self.clients.close()
        self.engine.dispose()

    async def spawn(self, start: Callable[[], None]) -> None:
        """Runs a (re)start of a process off the main thread. From the main thread the child is
        forked with a preexec_fn, and a fork while this process has gRPC calls in flight can
        crash the child before it execs (gRPC's fork handlers are skipped then); from another
        thread subprocess uses vfork, which runs no fork handlers at all."""
        await asyncio.to_thread(start)

    # --- the API -------------------------------------------------------------------------

    async def create(self, **params: Any) -> job_pb2.Job:
        response = await self.clients.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(**params), metadata=self.user, timeout=30
        )
        return response.job

    async def get(self, job_id: str, user: Any = None) -> job_pb2.Job:
        response = await self.clients.jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=job_id), metadata=user or self.user, timeout=30
        )
        return response.job

    async def cancel(self, job_id: str) -> job_pb2.Job:
        response = await self.clients.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id), metadata=self.user, timeout=30
        )
        return response.job

    async def wait_for(
        self, job_id: str, ok: Callable[[job_pb2.Job], bool], what: str, user: Any = None
    ) -> job_pb2.Job:
        """Polls GetJob until `ok(job)`; calls that fail meanwhile (a dependency down) are
        polled again."""

        async def probe() -> job_pb2.Job | None:
            try:
                job = await self.get(job_id, user)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return None
                raise
            return job if ok(job) else None

        return await eventually(probe, f"job {job_id}: {what}")

    async def wait_terminal(self, job_id: str) -> job_pb2.Job:
        return await self.wait_for(job_id, lambda j: j.status in FINISHED, "a terminal state")

    async def wait_generating(self, job_id: str, attempt: int = 1) -> job_pb2.Job:
        """Until `attempt` runs and has reported progress, i.e. the generator is at work."""
        return await self.wait_for(
            job_id,
            lambda j: j.status == RUNNING and j.attempt == attempt and j.progress > 0,
            f"attempt {attempt} generating",
        )

    async def watch(self, job_id: str) -> list[job_pb2.Job]:
        """Every message of one WatchJob stream, to its end."""

        async def collect() -> list[job_pb2.Job]:
            call = self.clients.notifier.WatchJob(
                notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=self.user
            )
            return [message.job async for message in call]

        return await asyncio.wait_for(collect(), WAIT_SECONDS)

    # --- the database --------------------------------------------------------------------

    async def sql(self, query: str, **params: Any) -> list[Any]:
        def run() -> list[Any]:
            with self.engine.connect() as conn:
                return list(conn.execute(text(query), params).all())

        return await asyncio.to_thread(run)

    async def output_rows(self, job_id: str) -> list[Any]:
        return await self.sql(
            "SELECT idx, bucket, key, byte_size, sha256 FROM outputs WHERE job_id = :id "
            "ORDER BY idx",
            id=job_id,
        )

    async def outbox_size(self) -> int:
        return int((await self.sql("SELECT count(*) FROM outbox"))[0][0])

    async def outbox_rows_of(self, job_id: str) -> int:
        rows = await self.sql(
            "SELECT count(*) FROM outbox WHERE subject LIKE :subject OR payload LIKE :like",
            subject=jetstream.job_events(job_id).replace("*", "%"),
            like=b"%" + job_id.encode() + b"%",
        )
        return int(rows[0][0])

    # --- the object store ----------------------------------------------------------------

    async def objects(self, prefix: str) -> dict[str, int]:
        """key -> size of every object under prefix."""

        def run() -> dict[str, int]:
            found: dict[str, int] = {}
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket="media", Prefix=prefix):
                for item in page.get("Contents", ()):
                    found[item["Key"]] = int(item["Size"])
            return found

        return await asyncio.to_thread(run)

    async def object_sha256(self, bucket: str, key: str) -> str:
        def run() -> str:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                return hashlib.sha256(body.read()).hexdigest()
            finally:
                body.close()

        return await asyncio.to_thread(run)

    def ensure_bucket(self) -> None:
        """moto keeps buckets in memory: after a restart of it the bucket is gone."""
        from services.common.s3 import ensure_bucket

        ensure_bucket(self.s3, "media")

    # --- JetStream -----------------------------------------------------------------------

    async def published_events(self, job_id: str) -> list[job_pb2.Job]:
        """Every status event of the job stored in MEDIA_EVENTS, in stream order."""
        return await self.stored_jobs(jetstream.job_events(job_id))

    async def stored_jobs(self, subjects: str, wait_seconds: float = 5) -> list[job_pb2.Job]:
        """The job of every event stored in MEDIA_EVENTS under `subjects`, in stream order."""
        nc = await nats.connect(self.deps.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(
                subjects,
                stream=jetstream.EVENTS_STREAM,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            found: list[job_pb2.Job] = []
            try:
                while True:
                    msg = await sub.next_msg(timeout=wait_seconds)
                    found.append(events_pb2.JobEvent.FromString(msg.data).job)
                    if msg.metadata.num_pending == 0:
                        return found
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    async def readiness(self) -> int:
        """job_service's readiness (""), UNKNOWN when it does not answer."""
        async with grpc.aio.insecure_channel(self.services.job_service_addr) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5
                )
            except grpc.aio.AioRpcError:
                return health_pb2.HealthCheckResponse.UNKNOWN
            return int(response.status)

    async def consumer_pending(self, kind: str) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered and not acked) for kind's workers."""
        nc = await nats.connect(self.deps.nats_url)
        try:
            info = await nc.jetstream().consumer_info(
                jetstream.DISPATCH_STREAM, jetstream.worker_consumer(kind)
            )
            return int(info.num_pending or 0), int(info.num_ack_pending or 0)
        finally:
            await nc.close()

    # --- the workers ---------------------------------------------------------------------

    def worker_records(self, job_id: str, msg: str | None = None) -> list[tuple[str, dict]]:
        """(worker name, log record) of every worker log line about the job."""
        found = []
        for worker in self.services.workers:
            for record in log_records(worker.log_path):
                if record.get("job_id") != job_id:
                    continue
                if msg is None or record.get("msg", "").startswith(msg):
                    found.append((worker.name, record))
        return found

    def claimed_by(self, job_id: str, attempt: int) -> ServiceProcess | None:
        """The worker whose log says it claimed `attempt` of the job."""
        for name, record in self.worker_records(job_id, "job claimed"):
            if record.get("attempt") == attempt:
                return next(w for w in self.services.workers if w.name == name)
        return None
