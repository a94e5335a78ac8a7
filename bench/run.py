"""`make bench`: figures measured in one run, each next to a baseline from the same run.

Starts the stack as `make up` does (or uses the one `make up` left running) and drives it from
this separate process:
  1. CreateJob throughput against a bare gRPC unary call on this machine (ratio);
  2. dispatch latency: CreateJob to a worker claiming the job (p50, p99);
  3. round trip: CreateJob to a watcher receiving SUCCEEDED, small local image (p50, p99);
  4. image jobs per second through one worker process against the Google fake with a fixed
     delay per call, at 1, 2 and 4 jobs in flight (bench/google.py);
  5. webhooks: deliveries per second to a local receiver (one user's endpoints, then as many
     over 20 users), and the latency from a job's change to the receiver (p50, p99), each next
     to plain aiohttp POSTs to the same receiver
     (bench/webhooks.py; BENCH_WEBHOOK_JOBS, BENCH_WEBHOOK_LATENCY_JOBS);
  6. the live feed: 1,000 and 10,000 watchers on one notifier, on one job and on one job each,
     every job changed at once; resume after a disconnect (bench/watchers.py, a stack of its own;
     BENCH_WATCHERS sets the counts, BENCH_SKIP_WATCHERS=1 skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.cli import UpStack
from devstack.state import default_run_dir
from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import jetstream
from services.common.auth import bearer_metadata, mint_token


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def throughput(
    call: Callable[[], Awaitable[object]], seconds: float, concurrency: int
) -> float:
    """Calls per second with `concurrency` calls in flight, after a short warm-up."""
    done = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    stop_at = time.perf_counter() + 0.5
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = 0
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def start_bare_server(stack: ExitStack) -> str:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(port_file)])
    stack.callback(proc.wait)
    stack.callback(proc.terminate)
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            return f"127.0.0.1:{port_file.read_text()}"
        time.sleep(0.05)
    raise RuntimeError("bare gRPC server did not start")


@contextmanager
def workers_paused() -> Iterator[None]:
    """Freezes the stack's workers (SIGSTOP) while CreateJob throughput is measured: on a shared
    two-core machine they would otherwise spend the CPU generating the very jobs being created,
    and the figure would say more about the local generator than about job_service."""
    pids = []
    for pid_file in (default_run_dir() / "pids").glob("media_worker-*.pid"):
        pids.append(int(pid_file.read_text().split()[0]))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def measure(addrs: UpStack, token: str, bare_addr: str, args: argparse.Namespace) -> None:
    job_addr, notifier_addr = addrs.job_service_addr, addrs.notifier_addr
    md = bearer_metadata(token)
    image = job_pb2.ImageParams(prompt="bench", size="256x256", model="local")
    async with (
        grpc.aio.insecure_channel(job_addr) as job_channel,
        grpc.aio.insecure_channel(notifier_addr) as notifier_channel,
        grpc.aio.insecure_channel(bare_addr) as bare_channel,
    ):
        jobs = job_service_pb2_grpc.JobServiceStub(job_channel)
        notifier = notifier_service_pb2_grpc.NotifierServiceStub(notifier_channel)
        bare = health_pb2_grpc.HealthStub(bare_channel)
        check = health_pb2.HealthCheckRequest()

        async def bare_call() -> object:
            return await bare.Check(check)

        async def create_call() -> object:
            return await jobs.CreateJob(job_service_pb2.CreateJobRequest(image=image), metadata=md)

        # 1. throughput, baseline first and last to see drift on a noisy machine.
        # Both baselines with the workers paused too: resumed, they would be generating the
        # jobs just created, on the same two cores.
        with workers_paused():
            base1 = await throughput(bare_call, args.seconds, args.concurrency)
            creates = await throughput(create_call, args.seconds, args.concurrency)
            base2 = await throughput(bare_call, args.seconds, args.concurrency)
        base = (base1 + base2) / 2
        print(f"bare gRPC unary:      {base:8.0f} calls/s  ({base1:.0f} before, {base2:.0f} after)")
        print(f"CreateJob:            {creates:8.0f} calls/s")
        print(f"CreateJob / bare:     {creates / base:8.2f}   (goal >= 0.50)")

        # The throughput phase queued many jobs; cancel them (the workers then skip them) and wait
        # for the queue to empty before timing single jobs.
        print("canceling the queued jobs and waiting for the queue to drain ...", flush=True)
        await drain(jobs, md, addrs.env["NATS_URL"])

        # 2 and 3. one job at a time so queueing does not pollute the latencies.
        dispatch, round_trip = [], []
        for _ in range(args.jobs):
            t0 = time.perf_counter()
            created = (
                await jobs.CreateJob(job_service_pb2.CreateJobRequest(image=image), metadata=md)
            ).job
            final = None
            async for message in notifier.WatchJob(
                notifier_service_pb2.WatchJobRequest(job_id=created.id), metadata=md
            ):
                final = message.job
            round_trip.append((time.perf_counter() - t0) * 1000)
            assert final is not None and final.status == job_pb2.JOB_STATUS_SUCCEEDED, final
            # Both stamps come from Postgres' clock: creation, and the worker's claim.
            start = final.start_time.ToNanoseconds() - final.create_time.ToNanoseconds()
            dispatch.append(start / 1e6)
        print(
            f"dispatch (create -> worker claims), ms: p50 {percentile(dispatch, 50):6.1f}  "
            f"p99 {percentile(dispatch, 99):6.1f}   (goal p99 <= 25)"
        )
        print(
            f"round trip (create -> watcher sees SUCCEEDED), ms: p50 "
            f"{percentile(round_trip, 50):6.1f}  p99 {percentile(round_trip, 99):6.1f}"
            f"   (goal p50 <= 50)"
        )
        print(
            f"(jobs timed: {len(round_trip)}; mean round trip {statistics.mean(round_trip):.1f} ms)"
        )


async def drain(jobs: job_service_pb2_grpc.JobServiceStub, md: tuple, nats_url: str) -> None:
    while True:
        page = await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=100, status=job_pb2.JOB_STATUS_QUEUED),
            metadata=md,
        )
        if not page.jobs:
            break
        await asyncio.gather(
            *(
                jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=j.id), metadata=md)
                for j in page.jobs
            ),
            return_exceptions=True,  # a worker may have started one meanwhile
        )
    running = job_service_pb2.ListJobsRequest(page_size=1, status=job_pb2.JOB_STATUS_RUNNING)
    while (await jobs.ListJobs(running, metadata=md)).jobs:  # noqa: ASYNC110 - polling a server
        await asyncio.sleep(0.2)
    # The workers still have to skip past the canceled dispatches (a refused claim each); a job
    # timed before they are through would wait behind them.
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        consumer = jetstream.worker_consumer("image")
        while True:
            info = await js.consumer_info(jetstream.DISPATCH_STREAM, consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def bench_token(addrs: UpStack) -> str:
    # A user of its own, so that draining the queue touches only the benchmark's jobs.
    if not addrs.secret:
        return addrs.token
    return mint_token(addrs.secret, f"bench-{secrets.token_hex(4)}", ttl_seconds=3600)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BENCH_JOBS", 200)))
    parser.add_argument(
        "--fake-delay",
        type=float,
        default=float(os.environ.get("BENCH_FAKE_DELAY", "0.5")),
        help="seconds per call of the Google fake in the worker-pool figures (0 skips them)",
    )
    args = parser.parse_args()

    from devstack import bench_stack
    from devstack.services import USER_LIMITS_OFF

    # One user creates hundreds of jobs in seconds: per-user limits off in a stack started here
    # (it inherits this environment; one already up keeps the settings it was started with).
    os.environ.update(USER_LIMITS_OFF)
    with ExitStack() as stack:
        addrs = bench_stack(stack)
        bare_addr = start_bare_server(stack)
        asyncio.run(measure(addrs, bench_token(addrs), bare_addr, args))
        from bench.webhooks import run_section as webhooks_section

        print("webhooks: deliveries to a local receiver ...", flush=True)
        webhooks_section(addrs)
    if args.fake_delay > 0:
        # Sizing worker pools: image jobs through the real google-genai SDK against the fake.
        from bench.google import google_throughput, report

        print("worker throughput against the Google fake (stack of its own) ...", flush=True)
        for line in report(asyncio.run(google_throughput(delay=args.fake_delay)), args.fake_delay):
            print(line)
    if os.environ.get("BENCH_SKIP_WATCHERS", "") != "1":
        from bench.watchers import run_section

        print("live feed: watchers on one notifier (stack of its own) ...", flush=True)
        run_section()


if __name__ == "__main__":
    main()
