"""The notifier's job cache: one read per job however many streams ask, reads of many jobs in
few calls, and nothing kept once no stream holds a job."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from media.v1 import job_pb2, job_reader_service_pb2
from services.common.job_reader import JobReader
from services.notifier.jobs import JobCache

SUCCEEDED = job_pb2.JOB_STATUS_SUCCEEDED
RUNNING = job_pb2.JOB_STATUS_RUNNING


class FakeReader(JobReader):
    """JobReader's calls, answered from a dict; every call recorded."""

    def __init__(self, jobs: dict[str, tuple[str, job_pb2.Job]]) -> None:
        self.jobs = jobs
        self.reads: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()

    async def read(self, job_ids: Sequence[str]) -> list[job_reader_service_pb2.OwnedJob]:
        self.reads.append(list(job_ids))
        self.called.set()
        await self.gate.wait()
        return [
            job_reader_service_pb2.OwnedJob(owner=self.jobs[i][0], job=self.jobs[i][1])
            for i in job_ids
            if i in self.jobs
        ]


def jobs(count: int, status: int = SUCCEEDED) -> dict[str, tuple[str, job_pb2.Job]]:
    made = {}
    for n in range(count):
        job_id = f"0190f3a0-0000-7000-8000-{n:012d}"
        made[job_id] = ("alice", job_pb2.Job(id=job_id, version=3, status=status))  # type: ignore[arg-type]
    return made


async def test_final_reads_of_many_jobs_at_once_go_out_in_batches() -> None:
    reader = FakeReader(jobs(20))
    cache = JobCache(reader, batch=8)
    found = await asyncio.gather(*(cache.final(i, 3) for i in reader.jobs))
    assert [f.id for f in found if f is not None] == list(reader.jobs)
    assert [len(r) for r in reader.reads] == [8, 8, 4]


async def test_many_streams_on_one_job_share_one_read() -> None:
    reader = FakeReader(jobs(1, RUNNING))
    (job_id,) = reader.jobs
    cache = JobCache(reader)
    reader.gate.clear()  # the read stays out while more streams arrive

    async def stream() -> tuple[str, job_pb2.Job] | None:
        with cache.held(job_id):
            return await cache.owned(job_id)

    first = [asyncio.create_task(stream()) for _ in range(10)]
    await reader.called.wait()
    assert len(reader.reads) == 1  # out, and not yet answered
    with cache.held(job_id):
        later = asyncio.create_task(cache.owned(job_id))  # joins the read in flight
        await asyncio.sleep(0)
        reader.gate.set()
        results = await asyncio.gather(*first, later)
        assert all(r is not None and r[0] == "alice" for r in results)
        assert len(reader.reads) == 1
        assert await cache.owned(job_id) is not None  # held: from memory
        assert len(reader.reads) == 1
    assert cache.size == 0  # nobody holds it any more: forgotten


async def test_an_event_newer_than_the_read_wins() -> None:
    reader = FakeReader(jobs(1, RUNNING))
    (job_id,) = reader.jobs
    cache = JobCache(reader)
    reader.gate.clear()
    with cache.held(job_id):
        reading = asyncio.create_task(cache.owned(job_id))
        await reader.called.wait()
        cache.observe(job_pb2.Job(id=job_id, version=4, status=RUNNING, progress=50))
        reader.gate.set()
        found = await reading
        assert found is not None and found[1].version == 4


async def test_a_stream_that_goes_away_does_not_cancel_the_read_of_others() -> None:
    reader = FakeReader(jobs(1))
    (job_id,) = reader.jobs
    cache = JobCache(reader)
    reader.gate.clear()
    leaving = asyncio.create_task(cache.final(job_id, 3))
    staying = asyncio.create_task(cache.final(job_id, 3))
    await reader.called.wait()
    leaving.cancel()
    reader.gate.set()
    found = await staying
    assert found is not None and found.version == 3
    assert len(reader.reads) == 1
