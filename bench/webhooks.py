"""Webhook figures for `make bench` (or `python -m bench.webhooks` against a `make up` stack):

  1. deliveries per second: ENDPOINTS endpoints of one user, each wanting job.queued, and
     BENCH_WEBHOOK_JOBS jobs created while the sender is SIGSTOPped; the sender is then resumed
     and timed until the local receiver has every delivery (fan-out, signing, POST, recording);
     baseline: the same number of POSTs of the same body to the same receiver from a plain
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

ENDPOINTS = 20  # MAX_WEBHOOK_ENDPOINTS_PER_USER's default
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


async def measure(addrs: UpStack, jobs_count: int, latency_jobs: int) -> None:
    user = f"bench-webhooks-{uuid.uuid4().hex[:6]}"
    token = mint_token(addrs.secret, user, ttl_seconds=3600) if addrs.secret else addrs.token
    md = bearer_metadata(token)
    receiver = Counting()
    await receiver.start()
    endpoint_ids: list[str] = []
    async with grpc.aio.insecure_channel(addrs.job_service_addr) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        hooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)

        async def register(path: str) -> None:
            created = await hooks.CreateWebhookEndpoint(
                webhook_service_pb2.CreateWebhookEndpointRequest(
                    url=receiver.url(path), event_types=["job.queued"]
                ),
                metadata=md,
            )
            endpoint_ids.append(created.endpoint.id)

        async def create() -> job_pb2.Job:
            request = job_service_pb2.CreateJobRequest(image=IMAGE)
            return (await jobs.CreateJob(request, metadata=md)).job

        try:
            with workers_paused():
                # 1. throughput
                for n in range(ENDPOINTS):
                    await register(f"/throughput/{n}")
                deliveries = ENDPOINTS * jobs_count
                receiver.expect(deliveries)
                with sender_paused():
                    # Fewer in flight than job_service serves at once (MAX_CONCURRENT_RPCS).
                    for start in range(0, jobs_count, 16):
                        await asyncio.gather(
                            *(create() for _ in range(min(16, jobs_count - start)))
                        )
                    await asyncio.sleep(1.0)  # the outbox relay publishes them meanwhile
                    started = time.perf_counter()
                await receiver.wait()
                rate = deliveries / (time.perf_counter() - started)
                sample = receiver.url("/baseline")
                body = b'{"type":"job.queued","timestamp":"","data":{}}' + b" " * 900
                receiver.expect(deliveries)
                base = await plain_posts(sample, deliveries, body)
                print(
                    f"webhook deliveries:   {rate:8.0f} /s  ({deliveries} = {jobs_count} jobs x "
                    f"{ENDPOINTS} endpoints; plain aiohttp POSTs to the same receiver: "
                    f"{base:.0f} /s, ratio {rate / base:.2f})"
                )
                for endpoint_id in endpoint_ids:
                    await hooks.DeleteWebhookEndpoint(
                        webhook_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                        metadata=md,
                    )
                endpoint_ids.clear()

                # 2. latency, one job at a time
                await register("/latency")
                latencies = []
                for _ in range(latency_jobs):
                    receiver.expect(1)
                    await create()
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
            await drain(jobs, md, addrs.env["NATS_URL"])
        finally:
            for endpoint_id in endpoint_ids:
                await hooks.DeleteWebhookEndpoint(
                    webhook_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                    metadata=md,
                )
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
