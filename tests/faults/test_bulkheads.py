"""A dependency that hangs (frozen with SIGSTOP: connections are accepted, nothing is answered)
holds only its own threads in job_service, and callers hear UNAVAILABLE within their deadline.

S3 frozen: one user's creates with an input image pile up on storage, while other users' reads
and a worker's progress reports, which need Postgres only, keep answering; the creates end
UNAVAILABLE, not DEADLINE_EXCEEDED. Postgres frozen: every call that needs it ends UNAVAILABLE.
Either way readiness says NOT_SERVING while the dependency is frozen and SERVING again after it
thaws, and creating a job works again without anyone stepping in.

The module plays the worker itself (STACK_WORKERS = 0): it claims a job and reports progress on
it, so no real worker touches storage meanwhile. Nothing here asserts how fast anything answers;
the client deadlines and GUARD_SECONDS only keep a regression from hanging the run.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from grpc_health.v1 import health_pb2
from PIL import Image

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common.errors import details_of
from tests.faults.helpers import SMALL_IMAGE, FaultStack, eventually

pytestmark = pytest.mark.faults

STACK_WORKERS = 0
# Far beyond the services' own bounds (a few seconds): a hang ends DEADLINE_EXCEEDED.
DEADLINE_SECONDS = 30.0
GUARD_SECONDS = 60.0
CREATES = 16  # twice the S3 threads and the SQL threads (DB_POOL_SIZE in FAULT_ENV)

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(out, format="PNG")
    return out.getvalue()


WITH_INPUT = job_pb2.ImageParams(
    prompt="from a tiny image",
    size="256x256",
    input_image=job_pb2.InputImage(data=tiny_png(), mime_type="image/png"),
)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid), counted after the parenthesised command name, which may hold spaces.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@contextmanager
def frozen(pid: int | None) -> Iterator[None]:
    """SIGSTOP to the process and its children (postgres: the postmaster first, so that it forks
    no more, then every backend, which each run in a session of their own), SIGCONT to all of
    them at the end whatever happens."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stopped = [pid]
    try:
        for child in children_of(pid):
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                stopped.append(child)
        yield
    finally:
        for each in reversed(stopped):
            with suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)


async def wait_readiness(fault: FaultStack, wanted: int, what: str) -> None:
    async def reached() -> bool:
        return await fault.readiness() == wanted

    await eventually(reached, what, GUARD_SECONDS)


async def error_of(call: Awaitable[object]) -> grpc.aio.AioRpcError | None:
    """The error a call ends with (None: it answered)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def code_of(call: Awaitable[object]) -> Code:
    """The status a call ends with."""
    error = await error_of(call)
    return Code.OK if error is None else error.code()


class Others:
    """What other users and a worker keep doing: bob reads his job and lists his jobs, and the
    worker reports progress on the job it claimed (carol's)."""

    def __init__(self, fault: FaultStack, bob_job: job_pb2.Job, claimed: job_pb2.Job) -> None:
        self.fault = fault
        self.bob = fault.clients.user("bob")
        self.bob_job = bob_job
        self.claimed = claimed
        self.progress = 0

    @classmethod
    async def prepare(cls, fault: FaultStack) -> Others:
        jobs = fault.clients.jobs
        bob_job = (
            await jobs.CreateJob(
                job_service_pb2.CreateJobRequest(image=SMALL_IMAGE),
                metadata=fault.clients.user("bob"),
                timeout=DEADLINE_SECONDS,
            )
        ).job
        carol_job = (
            await jobs.CreateJob(
                job_service_pb2.CreateJobRequest(image=SMALL_IMAGE),
                metadata=fault.clients.user("carol"),
                timeout=DEADLINE_SECONDS,
            )
        ).job
        claimed = (
            await fault.clients.workers.ClaimJob(
                worker_service_pb2.ClaimJobRequest(job_id=carol_job.id),
                metadata=fault.clients.worker,
                timeout=DEADLINE_SECONDS,
            )
        ).job
        return cls(fault, bob_job, claimed)

    async def one_round(self) -> None:
        """Each call answers OK (a hang would end DEADLINE_EXCEEDED and fail here)."""
        jobs = self.fault.clients.jobs
        got = await jobs.GetJob(
            job_service_pb2.GetJobRequest(job_id=self.bob_job.id),
            metadata=self.bob,
            timeout=DEADLINE_SECONDS,
        )
        assert got.job.id == self.bob_job.id
        listed = await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(), metadata=self.bob, timeout=DEADLINE_SECONDS
        )
        assert self.bob_job.id in [j.id for j in listed.jobs]
        self.progress = min(self.progress + 1, 99)
        reported = await self.fault.clients.workers.ReportProgress(
            worker_service_pb2.ReportProgressRequest(
                job_id=self.claimed.id, attempt=self.claimed.attempt, progress=self.progress
            ),
            metadata=self.fault.clients.worker,
            timeout=DEADLINE_SECONDS,
        )
        assert reported.job.progress == self.progress

    def calls(self) -> list[Awaitable[object]]:
        """The same calls, unawaited (for a frozen Postgres, where each must fail)."""
        jobs = self.fault.clients.jobs
        return [
            jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=self.bob_job.id),
                metadata=self.bob,
                timeout=DEADLINE_SECONDS,
            ),
            jobs.ListJobs(
                job_service_pb2.ListJobsRequest(), metadata=self.bob, timeout=DEADLINE_SECONDS
            ),
            self.fault.clients.workers.ReportProgress(
                worker_service_pb2.ReportProgressRequest(
                    job_id=self.claimed.id, attempt=self.claimed.attempt, progress=50
                ),
                metadata=self.fault.clients.worker,
                timeout=DEADLINE_SECONDS,
            ),
        ]


async def create_with_input(fault: FaultStack) -> job_pb2.Job:
    response = await fault.clients.jobs.CreateJob(
        job_service_pb2.CreateJobRequest(image=WITH_INPUT),
        metadata=fault.user,
        timeout=DEADLINE_SECONDS,
    )
    assert response.created
    return response.job


async def test_a_frozen_s3_holds_only_its_own_threads(fault: FaultStack) -> None:
    others = await Others.prepare(fault)
    await others.one_round()
    assert (await create_with_input(fault)).id  # the request itself is fine
    moto = fault.deps.s3
    assert moto is not None

    with frozen(moto.pid):
        creates = [asyncio.create_task(code_of(create_with_input(fault))) for _ in range(CREATES)]
        # The probe finds storage silent; the creates have long reached it by then.
        await wait_readiness(fault, NOT_SERVING, "NOT_SERVING while S3 is frozen")
        rounds = 0
        # Other users and the worker keep being answered while the creates wait on storage.
        while rounds == 0 or not all(task.done() for task in creates):
            await asyncio.wait_for(others.one_round(), GUARD_SECONDS)
            rounds += 1
            await asyncio.sleep(0.05)  # a steady trickle, not a flood on two cores
        codes = await asyncio.wait_for(asyncio.gather(*creates), GUARD_SECONDS)
        assert codes == [Code.UNAVAILABLE] * CREATES
        assert await fault.readiness() == NOT_SERVING  # still frozen
        await others.one_round()

    await wait_readiness(fault, SERVING, "SERVING again after S3 thawed")
    assert (await create_with_input(fault)).id
    await others.one_round()


async def test_a_frozen_postgres_answers_unavailable_and_recovers(fault: FaultStack) -> None:
    others = await Others.prepare(fault)
    await others.one_round()
    postgres = fault.deps.postgres
    assert postgres is not None

    with frozen(postgres.pid):
        # More calls than SQL threads (DB_POOL_SIZE=8): the first ones hold them, the rest find
        # none free.
        jobs = fault.clients.jobs
        creates = [
            jobs.CreateJob(
                job_service_pb2.CreateJobRequest(image=SMALL_IMAGE),
                metadata=fault.user,
                timeout=DEADLINE_SECONDS,
            )
            for _ in range(CREATES)
        ]
        calls = [*others.calls(), *creates, *(c for _ in range(4) for c in others.calls())]
        errors = await asyncio.wait_for(
            asyncio.gather(*(error_of(call) for call in calls)), GUARD_SECONDS
        )
        codes = [Code.OK if e is None else e.code() for e in errors]
        assert codes == [Code.UNAVAILABLE] * len(calls), codes
        # Told when to come back (google.rpc.RetryInfo), as every UNAVAILABLE of the database.
        assert all(e is not None and details_of(e, RetryInfo) for e in errors)
        await wait_readiness(fault, NOT_SERVING, "NOT_SERVING while Postgres is frozen")
        assert fault.services.job_service.running

    await wait_readiness(fault, SERVING, "SERVING again after Postgres thawed")
    await eventually(lambda: answers(others), "calls to succeed again", GUARD_SECONDS)
    created = await fault.create(image=SMALL_IMAGE)
    assert (await fault.get(created.id)).id == created.id


async def answers(others: Others) -> bool:
    """One round of the others' calls, True when all answered."""
    try:
        await others.one_round()
    except grpc.aio.AioRpcError as exc:
        if exc.code() == Code.UNAVAILABLE:  # a connection found broken by the freeze, once
            return False
        raise
    return True
