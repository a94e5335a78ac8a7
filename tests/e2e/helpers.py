"""Shared steps of the end-to-end tests."""

from __future__ import annotations

import asyncio
import io
import urllib.request

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2

# A guard against hanging, not a timing assertion: generous on a loaded two-core machine.
WAIT_SECONDS = 120


async def create(clients, metadata, **kw) -> job_pb2.Job:  # type: ignore[no-untyped-def]
    response = await clients.jobs.CreateJob(
        job_service_pb2.CreateJobRequest(**kw), metadata=metadata
    )
    return response.job


async def wait_terminal(clients, metadata, job_id: str) -> job_pb2.Job:  # type: ignore[no-untyped-def]
    """Follows the job through the notifier until it ends; returns the final state."""
    events = await watch_all(clients, metadata, job_id)
    return events[-1]


async def watch_all(clients, metadata, job_id: str) -> list[job_pb2.Job]:  # type: ignore[no-untyped-def]
    async def collect() -> list[job_pb2.Job]:
        seen = []
        call = clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata
        )
        async for message in call:
            seen.append(message.job)
        return seen

    return await asyncio.wait_for(collect(), WAIT_SECONDS)


async def poll_until(clients, metadata, job_id: str, statuses: set[int]) -> job_pb2.Job:  # type: ignore[no-untyped-def]
    async def loop() -> job_pb2.Job:
        while True:
            job = (
                await clients.jobs.GetJob(
                    job_service_pb2.GetJobRequest(job_id=job_id), metadata=metadata
                )
            ).job
            if job.status in statuses:
                return job
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(loop(), WAIT_SECONDS)


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


async def fetch(url: str) -> bytes:
    return await asyncio.to_thread(download, url)


def as_file(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
