"""The live feed under load: the last section of `make bench` (or `python -m bench.watchers`).

On a stack of its own (per-user limits off, the notifier's stream caps raised, the worker
SIGSTOPped so that every job stays QUEUED until the benchmark cancels it), for each N in
BENCH_WATCHERS (default 1000,10000):
  (a) N WatchJob streams on one job;
  (b) N jobs, one WatchJob stream each;
opened from load processes of their own (`python -m bench.watchers worker`, a few channels each,
BENCH_WATCHER_PROCS of them), then every job is canceled at once (CancelJob calls from this
process, as many in flight as job_service serves). Prints the streams opened, the errors, the
latency from each cancel's commit to each watcher receiving CANCELED (p50/p99/max), the
notifier's RSS per open stream and after the streams closed, and its CPU seconds per thousand
deliveries. Then the resume check: a WatchJobs feed is cut off (its channel closed under it), M
changes are made, and the feed reopened with its last cursor must get exactly those M, in order.

Every watcher opens at once. An open that is refused counts as an error and is tried again after
a short random pause, as a reconnecting client would (up to OPEN_ATTEMPTS): so "opened" says how
many streams the notifier came to hold, and "errors" what it cost to get there.

Latency is measured on one clock: a change's commit is the job's `update_time` in CancelJob's
answer (Postgres' statement_timestamp() of the UPDATE, a little before the COMMIT, so the figures
err long), and its receipt is time.time() in the load process when the message is read.
Figures, not assertions: the machine is shared and noisy; compare runs on one machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common.auth import bearer_metadata, mint_token

T = TypeVar("T")
MIB = 1024 * 1024
DEFAULT_COUNTS = (1000, 10000)
# The notifier's caps raised well past the largest N (one user holds every stream here).
STACK_ENV = {
    "RATE_LIMIT_PER_MINUTE": "0",
    "MAX_ACTIVE_JOBS_PER_USER": "0",
    "NOTIFIER_MAX_STREAMS_PER_USER": "100000",
    "NOTIFIER_MAX_STREAMS": "100000",
}
STREAMS_PER_CHANNEL = 500  # HTTP/2 streams a load process puts on one connection
# job_service serves 32 calls at once per listener (MAX_CONCURRENT_RPCS); stay just below.
CALLS_IN_FLIGHT = 30
OPEN_TIMEOUT_SECONDS = 120.0  # a load process reports what it has opened by then
DELIVERY_TIMEOUT_SECONDS = 60.0  # ... and what it has received this long after the change
# The notifier gives memory back ~2 s after many streams close (services/notifier/memory.py).
AFTER_CLOSE_SECONDS = 5.0
# A refused open is tried again, up to this many times in all: gRPC's server drops calls beyond a
# backlog of ~1,000 the application has not taken yet (grpc.server.max_pending_requests), which
# a burst of thousands of watchers opening at once reaches.
OPEN_ATTEMPTS = 5
_RETRIED = frozenset({"CANCELLED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})
RESUME_JOBS = 10  # the resume check creates this many jobs, then cancels them: M = 2 x this
_CHANNEL_OPTIONS = [
    # A connection of its own per channel: gRPC shares one between channels with equal arguments.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 4 * MIB),
]
_IMAGE = job_pb2.ImageParams(prompt="watchers bench", size="256x256", model="local")
_CANCELED = job_pb2.JOB_STATUS_CANCELED


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the notifier process, from /proc -------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5), counted after the parenthesised command name (field 2).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load process (python -m bench.watchers worker) --------------------------------------------


class _Streams:
    """The WatchJob streams of one load process and what they saw."""

    def __init__(self, count: int) -> None:
        self.pending = count  # neither open nor given up yet
        self.opened = 0
        self.refused: Counter[str] = Counter()  # open attempts that failed (then retried)
        self.never_opened: Counter[str] = Counter()  # by the last attempt's code
        self.later_errors: Counter[str] = Counter()  # streams that failed after opening
        self.live: set[int] = set()  # opened, CANCELED not received yet
        self.received: list[tuple[str, float]] = []  # (job ID, time.time()) of each CANCELED
        self.all_settled = asyncio.Event()
        if not count:
            self.all_settled.set()

    def _settled(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.all_settled.set()

    async def watch(
        self,
        index: int,
        stub: notifier_service_pb2_grpc.NotifierServiceStub,
        job_id: str,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        """One watcher: opens its stream (again, after a short random pause, when the open is
        refused, as a client reconnecting would), then reads it to the end."""
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            code = await self._stream(index, stub, job_id, metadata)
            if code is None:
                return
            if code not in _RETRIED or attempt == OPEN_ATTEMPTS:
                self.never_opened[code] += 1
                self._settled()
                return
            self.refused[code] += 1
            await asyncio.sleep(random.uniform(0.25, 1.0) * attempt)

    async def _stream(
        self,
        index: int,
        stub: notifier_service_pb2_grpc.NotifierServiceStub,
        job_id: str,
        metadata: tuple[tuple[str, str], ...],
    ) -> str | None:
        """None once the stream opened (whatever happens to it next); else why it did not."""
        request = notifier_service_pb2.WatchJobRequest(job_id=job_id)
        opened = False
        try:
            async for message in stub.WatchJob(request, metadata=metadata):
                now = time.time()
                if not opened:  # the first message is the job as it is: the stream is open
                    opened = True
                    self.opened += 1
                    self.live.add(index)
                    self._settled()
                if message.WhichOneof("event") == "job" and message.job.status == _CANCELED:
                    self.received.append((message.job.id, now))
                    self.live.discard(index)
        except grpc.aio.AioRpcError as exc:
            if not opened:
                return exc.code().name
            self.later_errors[exc.code().name] += 1
            self.live.discard(index)
            return None
        if not opened:
            return "ENDED_BEFORE_FIRST_MESSAGE"
        if index in self.live:
            self.later_errors["ENDED_WITHOUT_CANCELED"] += 1
            self.live.discard(index)
        return None


def _emit(report: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _load(config: dict[str, Any]) -> None:
    """Opens one stream per job ID given (over a few channels), reports what opened, then waits
    for the line that starts the count-down and reports what each stream received."""
    job_ids: list[str] = config["job_ids"]
    channels = [
        grpc.aio.insecure_channel(config["addr"], options=_CHANNEL_OPTIONS)
        for _ in range(max(1, math.ceil(len(job_ids) / STREAMS_PER_CHANNEL)))
    ]
    stubs = [notifier_service_pb2_grpc.NotifierServiceStub(c) for c in channels]
    metadata = bearer_metadata(config["token"])
    streams = _Streams(len(job_ids))
    started = time.monotonic()
    tasks = [
        asyncio.create_task(streams.watch(i, stubs[i % len(stubs)], job_id, metadata))
        for i, job_id in enumerate(job_ids)
    ]
    try:
        await asyncio.wait_for(streams.all_settled.wait(), OPEN_TIMEOUT_SECONDS)
    except TimeoutError:
        pass
    _emit(
        {
            "opened": streams.opened,
            "seconds": time.monotonic() - started,
            "refused": dict(streams.refused),
            "never_opened": dict(streams.never_opened),
            "pending": streams.pending,
        }
    )
    # The parent writes how long to wait once it has made the change (EOF: it is gone).
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    timeout = float(line) if line.strip() else 0.0
    unfinished: set[asyncio.Task[None]] = set()
    if tasks:
        _, unfinished = await asyncio.wait(tasks, timeout=timeout)
    live = len(streams.live)  # opened and still waiting for CANCELED
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    _emit(
        {
            "received": streams.received,
            "errors": dict(streams.later_errors),
            "unfinished": live,
        }
    )
    for channel in channels:
        await channel.close(grace=None)


def worker_main() -> None:
    config = json.loads(sys.stdin.readline())
    asyncio.run(_load(config))


class LoadProcess:
    """One load process, driven over its stdin and stdout (one JSON line per report)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, addr: str, token: str, job_ids: list[str]) -> LoadProcess:
        from devstack.state import REPO_ROOT

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.watchers",
            "worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            limit=64 * MIB,  # a report holds one entry per stream
        )
        assert proc.stdin is not None
        config = {"addr": addr, "token": token, "job_ids": job_ids}
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        await proc.stdin.drain()
        return cls(proc)

    async def report(self, wait_seconds: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait_seconds)
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"a load process ended early (exit code {code})")
        result: dict[str, Any] = json.loads(line)
        return result

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def load_processes(n: int) -> int:
    configured = os.environ.get("BENCH_WATCHER_PROCS", "").strip()
    if configured:
        return max(1, int(configured))
    return 2 if n <= 2000 else 4


# --- the benchmark -----------------------------------------------------------------------------


@dataclass
class Outcome:
    n: int
    processes: int
    opened: int = 0
    open_seconds: float = 0.0
    # Open attempts refused and tried again (the stream opened later, or is in never opened).
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # streams or cancels that failed
    latencies: list[float] = field(default_factory=list)  # seconds, one per delivery
    change_seconds: float = 0.0  # the first CancelJob sent to the last one answered
    rss_before: int = 0  # KiB
    rss_open: int = 0
    rss_after: int = 0
    cpu: float = 0.0  # notifier CPU seconds from the change until the last delivery
    failure: str = ""
    create_seconds: float = 0.0  # shape (b): creating the N jobs

    @property
    def deliveries(self) -> int:
        return len(self.latencies)


async def pooled(calls: Sequence[Callable[[], Awaitable[T]]], in_flight: int) -> list[T]:
    """Runs the calls with at most `in_flight` of them at once; results in order."""
    results: list[Any] = [None] * len(calls)
    following = iter(range(len(calls)))

    async def runner() -> None:
        for i in following:
            results[i] = await calls[i]()

    await asyncio.gather(*(runner() for _ in range(min(in_flight, len(calls)))))
    return results


class Bench:
    def __init__(self, job_addr: str, notifier_addr: str, notifier_pid: int, secret: str) -> None:
        self.notifier_addr = notifier_addr
        self.notifier_pid = notifier_pid
        self.secret = secret
        self.channel = grpc.aio.insecure_channel(job_addr)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.token = mint_token(secret, f"watchers-{secrets.token_hex(4)}", ttl_seconds=3600)
        self.metadata = bearer_metadata(self.token)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        # Over job_service's cap of calls at once (another caller's share): wait a little.
        for attempt in range(20):
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                retry = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
                if exc.code() not in retry or attempt == 19:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def create(self, metadata: tuple[tuple[str, str], ...] | None = None) -> job_pb2.Job:
        request = job_service_pb2.CreateJobRequest(image=_IMAGE)
        md = metadata or self.metadata
        response = await self._call(lambda: self.jobs.CreateJob(request, metadata=md, timeout=30))
        return response.job

    async def cancel(
        self, job_id: str, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> job_pb2.Job:
        request = job_service_pb2.CancelJobRequest(job_id=job_id)
        md = metadata or self.metadata
        response = await self._call(lambda: self.jobs.CancelJob(request, metadata=md, timeout=30))
        return response.job

    async def create_many(self, n: int) -> list[job_pb2.Job]:
        return await pooled([self.create] * n, CALLS_IN_FLIGHT)

    async def cancel_all(self, job_ids: Sequence[str]) -> tuple[dict[str, float], Counter[str]]:
        """Cancels every job at once (as many calls in flight as job_service serves); each job's
        commit time (its update_time, seconds since the epoch) and the calls that failed."""
        commits: dict[str, float] = {}
        failed: Counter[str] = Counter()

        def canceler(job_id: str) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                try:
                    job = await self.cancel(job_id)
                except grpc.aio.AioRpcError as exc:
                    failed[f"CancelJob {exc.code().name}"] += 1
                    return
                commits[job.id] = job.update_time.ToNanoseconds() / 1e9

            return one

        await pooled([canceler(j) for j in job_ids], CALLS_IN_FLIGHT)
        return commits, failed

    async def shape(self, n: int, one_job: bool) -> Outcome:
        """N watchers on one job (one_job) or on N jobs, one each; then every job is canceled."""
        processes = load_processes(n)
        outcome = Outcome(n=n, processes=processes)
        started = time.monotonic()
        if one_job:
            job_ids = [(await self.create()).id] * n
        else:
            job_ids = [job.id for job in await self.create_many(n)]
            outcome.create_seconds = time.monotonic() - started
        await asyncio.sleep(1.0)  # the notifier has dealt with their creation events
        pid = self.notifier_pid
        outcome.rss_before = rss_kib(pid)
        loads: list[LoadProcess] = []
        try:
            loads = list(
                await asyncio.gather(
                    *(
                        LoadProcess.start(self.notifier_addr, self.token, job_ids[i::processes])
                        for i in range(processes)
                    )
                )
            )
            opened = await asyncio.gather(
                *(load.report(OPEN_TIMEOUT_SECONDS + 60) for load in loads)
            )
            outcome.rss_open = rss_kib(pid)
            outcome.opened = sum(r["opened"] for r in opened)
            outcome.open_seconds = max(r["seconds"] for r in opened)
            for r in opened:
                outcome.refused.update(r["refused"])
                for code, count in r["never_opened"].items():
                    outcome.errors[f"never opened ({code})"] += count
                if r["pending"]:
                    outcome.errors["not open after the open timeout"] += r["pending"]

            cpu_start = cpu_seconds(pid)
            changed = time.monotonic()
            commits, failed = await self.cancel_all(sorted(set(job_ids)))
            outcome.change_seconds = time.monotonic() - changed
            outcome.errors.update(failed)
            for load in loads:
                await load.send(str(DELIVERY_TIMEOUT_SECONDS))
            done = await asyncio.gather(
                *(load.report(DELIVERY_TIMEOUT_SECONDS + 60) for load in loads)
            )
            outcome.cpu = cpu_seconds(pid) - cpu_start
            for r in done:
                outcome.errors.update(r["errors"])
                if r["unfinished"]:
                    outcome.errors["no CANCELED within the timeout"] += r["unfinished"]
                for job_id, received in r["received"]:
                    if job_id in commits:
                        outcome.latencies.append(received - commits[job_id])
        except Exception as exc:
            outcome.failure = f"{type(exc).__name__}: {exc}"
            for load in loads:
                if load.proc.returncode is None:
                    load.proc.kill()
        finally:
            for load in loads:
                await load.close()
        # Whatever is still open (a failed run) is canceled: the next shape starts clean.
        if outcome.failure:
            await self.cancel_all(sorted(set(job_ids)))
        await asyncio.sleep(AFTER_CLOSE_SECONDS)
        outcome.rss_after = rss_kib(pid)
        return outcome

    async def resume(self) -> list[str]:
        """A WatchJobs feed cut off (its channel closed under it), M changes made meanwhile, the
        feed reopened from its last cursor: exactly those M, in order, none twice?"""
        md = bearer_metadata(
            mint_token(self.secret, f"resume-{secrets.token_hex(4)}", ttl_seconds=3600)
        )
        channel = grpc.aio.insecure_channel(self.notifier_addr, options=_CHANNEL_OPTIONS)
        feed = notifier_service_pb2_grpc.NotifierServiceStub(channel).WatchJobs(
            notifier_service_pb2.WatchJobsRequest(), metadata=md
        )
        cursor = ""
        try:
            async with asyncio.timeout(30):
                while True:  # the opening snapshot (empty: a new user)
                    message = await feed.read()
                    assert message is not grpc.aio.EOF, "the feed ended"
                    cursor = message.cursor
                    if message.WhichOneof("event") == "snapshot_done":
                        break
                warm = await self.create(md)  # one live change, so the cursor is a live one
                while True:
                    message = await feed.read()
                    assert message is not grpc.aio.EOF, "the feed ended"
                    cursor = message.cursor
                    if message.WhichOneof("event") == "job" and message.job.id == warm.id:
                        break
        finally:
            await channel.close(grace=None)  # the forced disconnect

        missed: list[tuple[str, int]] = []  # (job ID, version) in commit order
        created = [await self.create(md) for _ in range(RESUME_JOBS)]
        missed += [(job.id, job.version) for job in created]
        for job in created:
            canceled = await self.cancel(job.id, md)
            missed.append((canceled.id, canceled.version))

        got: list[tuple[str, int]] = []
        resets = 0
        channel = grpc.aio.insecure_channel(self.notifier_addr, options=_CHANNEL_OPTIONS)
        feed = notifier_service_pb2_grpc.NotifierServiceStub(channel).WatchJobs(
            notifier_service_pb2.WatchJobsRequest(cursor=cursor), metadata=md
        )
        try:
            deadline = time.monotonic() + 30
            extra_until = math.inf  # after the last expected one, a second to catch extras
            while (now := time.monotonic()) < min(deadline, extra_until):
                try:
                    message = await asyncio.wait_for(feed.read(), min(deadline, extra_until) - now)
                except TimeoutError:
                    break
                if message is grpc.aio.EOF:
                    break
                event = message.WhichOneof("event")
                if event == "reset":
                    resets += 1
                elif event == "job":
                    got.append((message.job.id, message.job.version))
                    if len(got) >= len(missed) and extra_until == math.inf:
                        extra_until = time.monotonic() + 1.0
        finally:
            await channel.close(grace=None)
        duplicates = len(got) - len(set(got))
        in_order = got == missed
        lines = [
            f"resume: missed {len(missed)}, received {len(got)}, duplicates {duplicates}"
            f"   (in order, exactly those: {'yes' if in_order else 'no'}"
            f"{f'; resets {resets}' if resets else ''}; goal: exactly the missed changes)"
        ]
        if not in_order:
            unexpected = [c for c in got if c not in missed]
            lost = [c for c in missed if c not in got]
            lines.append(f"  unexpected {len(unexpected)}, not received {len(lost)}")
        return lines


def report(label: str, o: Outcome) -> list[str]:
    created = f"; {o.n} jobs created in {o.create_seconds:.1f} s" if o.create_seconds else ""
    lines = [f"{o.n} watchers {label} ({o.processes} load processes{created}):"]
    errors = sum(o.errors.values()) + sum(o.refused.values())
    parts = [f"{name} {count}" for name, count in sorted(o.errors.items())]
    if o.refused:
        refused = ", ".join(f"{code} {count}" for code, count in sorted(o.refused.items()))
        parts.append(f"opens refused, then tried again: {refused}")
    detail = "; ".join(parts)
    lines.append(
        f"  streams opened:           {o.opened:6d} / {o.n}  in {o.open_seconds:.1f} s"
        f"   (goal: 10,000 on one notifier)"
    )
    lines.append(
        f"  errors:                   {errors:6d}{f'  ({detail})' if detail else ''}   (goal 0)"
    )
    if o.failure:
        lines.append(f"  stopped early: {o.failure}")
    if o.latencies:
        ms = [s * 1000 for s in o.latencies]
        lines.append(
            f"  commit -> delivery, ms:   p50 {percentile(ms, 50):7.1f}  p99 "
            f"{percentile(ms, 99):7.1f}  max {max(ms):7.1f}   (goal p99 <= 1000; "
            f"{o.deliveries} deliveries, the cancels took {o.change_seconds:.1f} s)"
        )
    else:
        lines.append("  commit -> delivery:       nothing delivered")
    if o.opened and o.rss_open:
        per_stream = (o.rss_open - o.rss_before) / o.opened
        lines.append(
            f"  notifier RSS per stream:  {per_stream:6.1f} KiB   (goal <= 20; "
            f"{o.rss_before / 1024:.1f} MiB before, {o.rss_open / 1024:.1f} MiB open)"
        )
    if o.rss_after:
        change = (o.rss_after - o.rss_before) / o.rss_before * 100
        lines.append(
            f"  notifier RSS after close: {o.rss_after / 1024:6.1f} MiB, {change:+.1f} % of its "
            f"start   (goal within 10 %, {AFTER_CLOSE_SECONDS:.0f} s after)"
        )
    if o.deliveries:
        lines.append(
            f"  notifier CPU:             {o.cpu / o.deliveries * 1000:6.2f} s per 1000 "
            f"deliveries   ({o.cpu:.2f} s for {o.deliveries})"
        )
    return lines


async def measure(
    job_addr: str, notifier_addr: str, notifier_pid: int, secret: str, counts: Sequence[int]
) -> None:
    bench = Bench(job_addr, notifier_addr, notifier_pid, secret)  # its channel on this loop
    fresh = rss_kib(notifier_pid)
    try:
        for n in counts:
            for label, one_job in (("on one job", True), ("on one job each", False)):
                outcome = await bench.shape(n, one_job)
                for line in report(label, outcome):
                    print(line, flush=True)
        # The first shape starts from a fresh process: what a burst leaves behind for good shows
        # here rather than in any one shape's figures.
        end = rss_kib(notifier_pid)
        print(
            f"notifier RSS: {fresh / 1024:.1f} MiB fresh, {end / 1024:.1f} MiB after every shape "
            f"closed ({(end - fresh) / fresh * 100:+.1f} %)",
            flush=True,
        )
        for line in await bench.resume():
            print(line, flush=True)
    finally:
        await bench.channel.close()


def watcher_counts() -> list[int]:
    configured = os.environ.get("BENCH_WATCHERS", "").strip()
    if not configured:
        return list(DEFAULT_COUNTS)
    return [int(part) for part in configured.replace(" ", "").split(",") if part]


def run_section(counts: Sequence[int] | None = None) -> None:
    """Starts a stack of its own, measures, stops it."""
    from devstack.deps import start_dependencies
    from devstack.services import start_services

    counts = list(counts) if counts is not None else watcher_counts()
    secret = secrets.token_urlsafe(32)
    print(
        "(commit -> delivery: from CancelJob's update_time, Postgres' statement_timestamp(), to "
        "the load process reading CANCELED; one clock)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="watchers-") as tmp:
        root = Path(tmp)
        deps = start_dependencies(root / "deps")
        try:
            services = start_services(root / "run", deps, secret, workers=1, extra_env=STACK_ENV)
            try:
                assert services.notifier is not None and services.notifier.pid is not None
                for worker in services.workers:  # jobs stay QUEUED until they are canceled
                    if worker.pid is not None:
                        os.kill(worker.pid, signal.SIGSTOP)
                asyncio.run(
                    measure(
                        services.job_service_addr,
                        services.notifier_addr,
                        services.notifier.pid,
                        secret,
                        counts,
                    )
                )
            finally:
                for worker in services.workers:
                    worker.kill()  # stopped, it would ignore SIGTERM until the timeout
                services.stop()
        finally:
            deps.stop()


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker_main()
    else:
        run_section()


if __name__ == "__main__":
    main()
