"""Webhook figures for `make bench` (or `python -m bench.webhooks` against a `make up` stack):

  1. deliveries per second: ENDPOINTS endpoints of one user, each wanting job.queued, and
     BENCH_WEBHOOK_JOBS jobs created while the sender is SIGSTOPped; the sender is then resumed
     and timed until the local receiver has every delivery (fan-out, signing, POST, recording).
     Then as many deliveries over USERS users (one user's receivers hold at most
     WEBHOOK_MAX_IN_FLIGHT_PER_USER requests, all users together WEBHOOK_MAX_IN_FLIGHT).
     Baseline: the same number of POSTs of the same body to the same receiver from a plain
     aiohttp loop with WEBHOOK_MAX_IN_FLIGHT (64) in flight;
  2. latency from a job's change (its update_time, Postgres' clock) to the receiver (this
     machine's clock), one job at a time, p50/p99; baseline: one plain POST's round trip.

The workers are SIGSTOPped throughout (the jobs stay QUEUED and are canceled afterwards), and the
endpoints are deleted at the end. Figures, not assertions: the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import aiohttp
import grpc
from aiohttp import web

from bench.run import drain, percentile, workers_paused
from devstack.cli import UpStack
from devstack.procs import free_port
from devstack.state import default_run_dir
from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)
from services.common.auth import bearer_metadata, mint_token

Metadata = tuple[tuple[str, str], ...]  # a user's bearer_metadata

ENDPOINTS = 20  # MAX_WEBHOOK_ENDPOINTS_PER_USER's default
# The many-users figure: as many deliveries, over USERS users with USER_ENDPOINTS endpoints each.
USERS, USER_ENDPOINTS = 20, 4
CONCURRENCY = 64  # WEBHOOK_MAX_IN_FLIGHT's default
WAIT_SECONDS = 300.0  # hang guard
IMAGE = job_pb2.ImageParams(prompt="webhook bench", size="256x256", model="local")


class Counting:
    """A receiver that counts requests and keeps each one's arrival time and timestamp."""

    def __init__(self) -> None:
        self.count = 0
        self.arrivals: list[tuple[float, str]] = []  # (time.time(), the body's timestamp)
        self.target = 0
        self.done = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def expect(self, count: int) -> None:
        self.count, self.target = 0, count
        self.arrivals.clear()
        self.done.clear()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrivals.append((time.time(), str(body.get("timestamp", ""))))
        self.count += 1
        if self.count >= self.target:
            self.done.set()
        return web.Response(text="ok")

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), WAIT_SECONDS)


@contextmanager
def sender_paused() -> Iterator[None]:
    pid = int((default_run_dir() / "pids" / "webhooks.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def plain_posts(url: str, count: int, body: bytes) -> float:
    """POSTs per second from a bare aiohttp loop, CONCURRENCY in flight."""
    left = count

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=body) as response:
                await response.read()

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)


async def plain_round_trips(url: str, count: int, body: bytes) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, data=body) as response:
                await response.read()
            times.append((time.perf_counter() - started) * 1000)
    return times


class Bench:
    """The stack's JobService and WebhookService, users of the bench's own, and the receiver."""

    def __init__(self, addrs: UpStack, channel: grpc.aio.Channel, receiver: Counting) -> None:
        self.addrs = addrs
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.hooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)
        self.receiver = receiver
        self.users: list[Metadata] = []
        self.endpoints: list[tuple[str, Metadata]] = []

    def user(self) -> Metadata:
        name = f"bench-webhooks-{uuid.uuid4().hex[:6]}"
        addrs = self.addrs
        token = mint_token(addrs.secret, name, ttl_seconds=3600) if addrs.secret else addrs.token
        md = bearer_metadata(token)
        self.users.append(md)
        return md

    async def register(self, md: Metadata, path: str) -> None:
        created = await self.hooks.CreateWebhookEndpoint(
            webhook_service_pb2.CreateWebhookEndpointRequest(
                url=self.receiver.url(path), event_types=["job.queued"]
            ),
            metadata=md,
        )
        self.endpoints.append((created.endpoint.id, md))

    async def unregister(self) -> None:
        for endpoint_id, md in self.endpoints:
            await self.hooks.DeleteWebhookEndpoint(
                webhook_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                metadata=md,
            )
        self.endpoints.clear()

    async def create(self, md: Metadata) -> job_pb2.Job:
        request = job_service_pb2.CreateJobRequest(image=IMAGE)
        return (await self.jobs.CreateJob(request, metadata=md)).job

    async def throughput(self, users: int, endpoints_each: int, jobs_each: int) -> float:
        """Deliveries per second of `jobs_each` jobs of each of `users` new users, each with
        `endpoints_each` endpoints, created while the sender is paused."""
        mds = [self.user() for _ in range(users)]
        for u, md in enumerate(mds):
            for n in range(endpoints_each):
                await self.register(md, f"/throughput/{u}/{n}")
        deliveries = users * endpoints_each * jobs_each
        self.receiver.expect(deliveries)
        with sender_paused():
            creates = [md for md in mds for _ in range(jobs_each)]
            # Fewer in flight than job_service serves at once (MAX_CONCURRENT_RPCS).
            for start in range(0, len(creates), 16):
                await asyncio.gather(*(self.create(md) for md in creates[start : start + 16]))
            await asyncio.sleep(1.0)  # the outbox relay publishes them meanwhile
            started = time.perf_counter()
        await self.receiver.wait()
        rate = deliveries / (time.perf_counter() - started)
        await self.unregister()
        return rate


async def measure(addrs: UpStack, jobs_count: int, latency_jobs: int) -> None:
    receiver = Counting()
    await receiver.start()
    async with grpc.aio.insecure_channel(addrs.job_service_addr) as channel:
        bench = Bench(addrs, channel, receiver)
        try:
            with workers_paused():
                # 1. throughput: one user's endpoints, then as many deliveries over many users
                # (each user's receivers hold at most WEBHOOK_MAX_IN_FLIGHT_PER_USER requests).
                deliveries = ENDPOINTS * jobs_count
                one = await bench.throughput(1, ENDPOINTS, jobs_count)
                many_jobs = max(1, deliveries // (USERS * USER_ENDPOINTS))
                many = await bench.throughput(USERS, USER_ENDPOINTS, many_jobs)
                sample = receiver.url("/baseline")
                body = b'{"type":"job.queued","timestamp":"","data":{}}' + b" " * 900
                receiver.expect(deliveries)
                base = await plain_posts(sample, deliveries, body)
                print(
                    f"webhook deliveries:   {one:8.0f} /s  ({deliveries} = {jobs_count} jobs x "
                    f"{ENDPOINTS} endpoints of one user; plain aiohttp POSTs to the same "
                    f"receiver: {base:.0f} /s, ratio {one / base:.2f})"
                )
                print(
                    f"  over {USERS} users:    {many:8.0f} /s  (ratio {many / base:.2f}; "
                    f"{USER_ENDPOINTS} endpoints x {many_jobs} jobs each)"
                )

                # 2. latency, one job at a time
                md = bench.user()
                await bench.register(md, "/latency")
                latencies = []
                for _ in range(latency_jobs):
                    receiver.expect(1)
                    await bench.create(md)
                    await receiver.wait()
                    arrived, stamp = receiver.arrivals[0]
                    changed = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    latencies.append((arrived - changed) * 1000)
                plain = await plain_round_trips(sample, latency_jobs, body)
                print(
                    f"webhook latency (job change -> receiver), ms: p50 "
                    f"{percentile(latencies, 50):6.1f}  p99 {percentile(latencies, 99):6.1f}   "
                    f"(a plain POST's round trip: p50 {percentile(plain, 50):.1f}  "
                    f"p99 {percentile(plain, 99):.1f})"
                )
            # Canceled while the workers were paused; they skip past them once resumed.
            for md in bench.users:
                await drain(bench.jobs, md, addrs.env["NATS_URL"])
        finally:
            await bench.unregister()
            assert receiver.runner is not None
            await receiver.runner.cleanup()


def run_section(addrs: UpStack) -> None:
    asyncio.run(
        measure(
            addrs,
            int(os.environ.get("BENCH_WEBHOOK_JOBS", "100")),
            int(os.environ.get("BENCH_WEBHOOK_LATENCY_JOBS", "100")),
        )
    )


if __name__ == "__main__":
    from contextlib import ExitStack

    from devstack.cli import bench_stack

    with ExitStack() as exit_stack:
        run_section(bench_stack(exit_stack))
