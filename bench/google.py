"""Throughput of image jobs through one worker process generating with the Google generator
against the local fake of Google's API, which answers every call after a fixed delay: how many
jobs per second 1, 2 and 4 jobs in flight per worker process (WORKER_CONCURRENCY) give, next to
the ideal concurrency / delay. Use it to size worker pools: with a real model's latency L per
image, one process at concurrency C gives at most C / L images per second.

Runs a stack of its own (own Postgres, NATS and S3, so nothing else takes its jobs), the fake as a
separate process, and restarts the worker (WORKER_KINDS=image, as in an image pool) for each
concurrency. Each run first warms the worker
with one job per slot, then submits `jobs_per_slot * concurrency` jobs at once and measures from
the first claim to the last completion, both stamped by Postgres.

    python -m bench.google          # BENCH_FAKE_DELAY (0.5 s), BENCH_GOOGLE_JOBS_PER_SLOT (12)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from devstack.services import USER_LIMITS_OFF
from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common.auth import bearer_metadata, mint_token
from tests.e2e.google_stack import GoogleStack, google_worker_env, start_google_stack

CONCURRENCIES = (1, 2, 4)
# A guard against a stuck run, not part of the measurement.
RUN_TIMEOUT_SECONDS = 300.0
_UNFINISHED = [job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING]


@dataclass(frozen=True)
class Run:
    concurrency: int
    jobs: int
    seconds: float  # first claim to last completion

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds


@contextmanager
def fake_process(delay: float, api_key: str) -> Iterator[str]:
    """The fake in its own process (its image encoding must not share our interpreter);
    yields its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.gemini_fake",
            "--port",
            "0",
            "--delay",
            str(delay),
            "--api-key",
            api_key,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if "listening on " not in line:
            raise RuntimeError(f"the Gemini fake did not start: {line!r}")
        yield line.rsplit("listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _any_unfinished(
    jobs: job_service_pb2_grpc.JobServiceStub, md: tuple[tuple[str, str], ...]
) -> bool:
    for status in _UNFINISHED:
        page = await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=1, status=status), metadata=md
        )
        if page.jobs:
            return True
    return False


async def _run_jobs(
    jobs: job_service_pb2_grpc.JobServiceStub, md: tuple[tuple[str, str], ...], count: int
) -> list[job_pb2.Job]:
    """Submits `count` image jobs at once and returns them once none is queued or running."""
    # 1024x1024 PNG is what the model renders: the worker stores the fake's bytes unchanged, so
    # the figure is about waiting on the API, not about re-encoding.
    params = job_pb2.ImageParams(prompt="bench", size="1024x1024", format=job_pb2.IMAGE_FORMAT_PNG)
    # Within job_service's cap on calls at once (32 per listener, answered RESOURCE_EXHAUSTED
    # beyond it), which 48 creates at once overran on a busy machine.
    slots = asyncio.Semaphore(16)

    async def create() -> job_service_pb2.CreateJobResponse:
        async with slots:
            request = job_service_pb2.CreateJobRequest(image=params)
            response: job_service_pb2.CreateJobResponse = await jobs.CreateJob(request, metadata=md)
            return response

    created = await asyncio.gather(*(create() for _ in range(count)))
    ids = {response.job.id for response in created}
    # The user has no other jobs in flight: done once none of theirs is queued or running
    # (polled: job_service is another process, and polling costs the worker nothing).
    while True:
        if not await _any_unfinished(jobs, md):
            break
        await asyncio.sleep(0.1)
    done: list[job_pb2.Job] = []
    token = ""
    while True:
        page = await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=100, page_token=token), metadata=md
        )
        done += [job for job in page.jobs if job.id in ids]
        token = page.next_page_token
        if not token:
            break
    assert len(done) == count, (len(done), count)
    failed = [job for job in done if job.status != job_pb2.JOB_STATUS_SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} bench job(s) did not succeed: {failed[0].error}")
    return done


async def _measure(stack: GoogleStack, concurrency: int, jobs_per_slot: int) -> Run:
    # A user per run, so each run's jobs are listed on their own.
    token = mint_token(stack.secret, f"bench-google-c{concurrency}-{secrets.token_hex(4)}")
    md = bearer_metadata(token)
    async with grpc.aio.insecure_channel(stack.services.job_service_addr) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        await _run_jobs(jobs, md, concurrency)  # warm-up: SDK client, connections
        count = jobs_per_slot * concurrency
        done = await _run_jobs(jobs, md, count)
    first = min(job.start_time.ToNanoseconds() for job in done)
    last = max(job.end_time.ToNanoseconds() for job in done)
    return Run(concurrency=concurrency, jobs=count, seconds=(last - first) / 1e9)


async def google_throughput(
    *,
    delay: float = 0.5,
    concurrencies: Sequence[int] = CONCURRENCIES,
    jobs_per_slot: int = 12,
    run_dir: Path | None = None,
) -> list[Run]:
    """One Run per concurrency, each on a freshly started worker process."""
    api_key = f"bench-key-{secrets.token_hex(8)}"
    root = run_dir or Path(tempfile.mkdtemp(prefix="bench-google-"))
    try:
        return await _throughput(root, api_key, delay, concurrencies, jobs_per_slot)
    finally:
        if run_dir is None:  # ours: data and logs of a finished run are of no further use
            await asyncio.to_thread(shutil.rmtree, root, True)


async def _throughput(
    root: Path, api_key: str, delay: float, concurrencies: Sequence[int], jobs_per_slot: int
) -> list[Run]:
    runs: list[Run] = []
    with fake_process(delay, api_key) as fake_url:
        base_env = google_worker_env(
            fake_url,
            api_key,
            # As deployed, apart from the fake's address and a key of its own. An image pool:
            # a worker that also pulls videos keeps a slot waiting on the empty video queue.
            WORKER_KINDS="image",
            PROGRESS_INTERVAL_SECONDS="0.25",
            LOG_LEVEL="WARNING",
        )
        stack = await asyncio.to_thread(
            start_google_stack,
            root,
            {**base_env, "WORKER_CONCURRENCY": str(concurrencies[0])},
            # One user keeps every slot busy (dozens of jobs at once): per-user limits off.
            job_env={"LOG_LEVEL": "WARNING", **USER_LIMITS_OFF},
        )
        try:
            for index, concurrency in enumerate(concurrencies):
                if index:
                    env = {**base_env, "WORKER_CONCURRENCY": str(concurrency)}
                    await asyncio.to_thread(stack.replace_worker, env)
                runs.append(
                    await asyncio.wait_for(
                        _measure(stack, concurrency, jobs_per_slot), RUN_TIMEOUT_SECONDS
                    )
                )
        finally:
            await asyncio.to_thread(stack.stop)
    return runs


def report(runs: Sequence[Run], delay: float) -> list[str]:
    """The summary line, then one line per concurrency against the ideal."""
    base = runs[0].jobs_per_second if runs else 0.0
    parts = []
    for run in runs:
        part = f"{run.concurrency}: {run.jobs_per_second:.2f} jobs/s"
        if run is not runs[0] and base > 0:
            part += f" ({run.jobs_per_second / base:.2f}x of {runs[0].concurrency})"
        parts.append(part)
    lines = [
        f"google fake (delay {delay:.2f} s/call), 1 worker process: concurrency " + "  ".join(parts)
    ]
    for run in runs:
        ideal = run.concurrency / delay
        lines.append(
            f"  concurrency {run.concurrency}: {run.jobs:3d} jobs in {run.seconds:6.2f} s = "
            f"{run.jobs_per_second:5.2f} jobs/s; ideal {ideal:5.2f} (concurrency / delay), "
            f"{100 * run.jobs_per_second / ideal:3.0f}% of it"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--delay", type=float, default=float(os.environ.get("BENCH_FAKE_DELAY", "0.5"))
    )
    parser.add_argument(
        "--jobs-per-slot",
        type=int,
        default=int(os.environ.get("BENCH_GOOGLE_JOBS_PER_SLOT", "12")),
        help="jobs submitted per unit of concurrency (default 12)",
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCIES), help="default 1 2 4"
    )
    args = parser.parse_args()
    started = time.monotonic()
    runs = asyncio.run(
        google_throughput(
            delay=args.delay, concurrencies=args.concurrency, jobs_per_slot=args.jobs_per_slot
        )
    )
    for line in report(runs, args.delay):
        print(line)
    print(f"(google bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
