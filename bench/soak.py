"""`make soak`: load with faults. Thousands of jobs are submitted at a steady rate while workers
are SIGKILLed and restarted and nats-server is restarted; then every job is accounted for.

Sized by SOAK_JOBS (default 2000) submitted evenly over SOAK_SECONDS (default 240), with
SOAK_GRACE_SECONDS (default 180) for the last jobs to finish and SOAK_WORKERS workers (default 2).
Mostly small local images, a few short videos. The stack is its own (its own Postgres,
nats-server and moto under $MEDIA_RUN_DIR/soak, default .run/soak), since nats-server is
restarted under it.

The last line is the verdict:
    soak: submitted N succeeded N failed N lost N duplicated N
submitted: jobs accepted by CreateJob (each create is retried with its request_id until
accepted). lost: jobs with no terminal state at the end of the grace period. duplicated: jobs
with more outputs recorded than asked, or any output object stored that no record points to
(left by an attempt that died or was superseded), or any output recorded for a job that did not
succeed. Details go to stderr before it: stored objects whose size differs from the record
(corrupt), unrecorded objects, the status events in MEDIA_EVENTS (each job's versions must be
there once each), and watchers that did not see their job finish. The exit code is 0 only when
lost, duplicated and corrupt are 0.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
from nats.js.api import DeliverPolicy
from sqlalchemy import create_engine, text

from devstack.deps import Dependencies, start_dependencies
from devstack.services import USER_LIMITS_OFF, Services, start_services
from devstack.state import default_run_dir
from media.v1 import (
    events_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import jetstream
from services.common.auth import bearer_metadata, mint_token
from services.common.lifecycle import FINISHED
from services.job_service.schema import ACTIVE_PREDICATE

SUBJECT = "soak-user"
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
IMAGE_SIZES = ("256x256", "512x512")
IMAGE_FORMATS = (job_pb2.IMAGE_FORMAT_PNG, job_pb2.IMAGE_FORMAT_JPEG, job_pb2.IMAGE_FORMAT_WEBP)
VIDEO_SHARE = 0.05  # seconds of work each: the jobs a killed worker is most likely caught in
WATCH_EVERY = 25  # one job in this many is also followed through the notifier
# The soak's workers: short leases so a killed worker's jobs come back soon, small videos.
STACK_ENV = {
    "ACK_WAIT_SECONDS": "10",
    "LOCAL_VIDEO_LONG_SIDE": "640",
    "RETRY_BASE_DELAY_SECONDS": "1",
    "RETRY_MAX_DELAY_SECONDS": "10",
    "LOG_LEVEL": "INFO",  # the chaos finds busy workers by their "job claimed" lines
    # One user submits every job (2000 over 240 s by default): per-user limits off.
    **USER_LIMITS_OFF,
}


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass
class Submitted:
    job_id: str
    kind: str
    asked: int  # outputs asked for


@dataclass
class Tally:
    submitted: list[Submitted] = field(default_factory=list)
    rejected: int = 0  # creates that never got through (not part of "submitted")
    watches: int = 0
    watch_missed: list[str] = field(default_factory=list)


def job_request(index: int, rng: random.Random) -> tuple[job_service_pb2.CreateJobRequest, int]:
    request_id = f"soak-{index}"
    if rng.random() < VIDEO_SHARE:
        params = job_pb2.VideoParams(
            prompt=f"soak video {index}", duration_seconds=rng.choice((4, 6, 8))
        )
        return job_service_pb2.CreateJobRequest(request_id=request_id, video=params), 1
    count = rng.choice((1, 1, 1, 2))
    image = job_pb2.ImageParams(
        prompt=f"soak image {index}",
        size=rng.choice(IMAGE_SIZES),
        format=rng.choice(IMAGE_FORMATS),
        number_of_images=count,
    )
    return job_service_pb2.CreateJobRequest(request_id=request_id, image=image), count


class Soak:
    def __init__(
        self, deps: Dependencies, services: Services, token: str, jobs: int, seconds: float
    ):
        self.deps = deps
        self.services = services
        self.md = bearer_metadata(token)
        self.jobs = jobs
        self.seconds = seconds
        self.tally = Tally()
        self.rng = random.Random(20240601)

    async def run(self, grace: float) -> Tally:
        async with (
            grpc.aio.insecure_channel(self.services.job_service_addr) as job_channel,
            grpc.aio.insecure_channel(self.services.notifier_addr) as notifier_channel,
        ):
            self.api = job_service_pb2_grpc.JobServiceStub(job_channel)
            self.notifier = notifier_service_pb2_grpc.NotifierServiceStub(notifier_channel)
            watchers: list[asyncio.Task[None]] = []
            chaos = asyncio.create_task(self.chaos())
            await self.submit(watchers)
            log(f"submitted {len(self.tally.submitted)} jobs; waiting for them to finish")
            await chaos
            await self.wait_all(grace)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        return self.tally

    # --- load ----------------------------------------------------------------------------

    async def submit(self, watchers: list[asyncio.Task[None]]) -> None:
        interval = self.seconds / max(1, self.jobs)
        start = time.monotonic()
        creates: list[asyncio.Task[None]] = []
        for index in range(self.jobs):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            request, asked = job_request(index, self.rng)
            creates.append(asyncio.create_task(self.create(index, request, asked, watchers)))
            if index and index % 250 == 0:
                log(f"{index} jobs sent")
        await asyncio.gather(*creates)

    async def create(
        self,
        index: int,
        request: job_service_pb2.CreateJobRequest,
        asked: int,
        watchers: list[asyncio.Task[None]],
    ) -> None:
        # The request_id makes a retried create safe: a retry returns the job the first made.
        deadline = time.monotonic() + 120
        delay = 0.2
        while True:
            try:
                response = await self.api.CreateJob(request, metadata=self.md, timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    log(f"create {index} rejected: {exc.code().name}: {exc.details()}")
                    self.tally.rejected += 1
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        kind = request.WhichOneof("params") or ""
        self.tally.submitted.append(Submitted(response.job.id, kind, asked))
        if index % WATCH_EVERY == 0:
            self.tally.watches += 1
            watchers.append(asyncio.create_task(self.watch(response.job.id)))

    async def watch(self, job_id: str) -> None:
        """Follows the job to its end, watching again when a stream breaks (what a client
        does); a watcher cut off before the end is counted as missed."""
        try:
            while True:
                try:
                    call = self.notifier.WatchJob(
                        notifier_service_pb2.WatchJobRequest(job_id=job_id), metadata=self.md
                    )
                    async for message in call:
                        if message.job.status in FINISHED:
                            return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                await asyncio.sleep(1)
        except BaseException:
            self.tally.watch_missed.append(job_id)
            raise

    # --- faults --------------------------------------------------------------------------

    async def chaos(self) -> None:
        """Kills and restarts a busy worker, then restarts nats-server, then kills a busy worker
        again, restarts nats-server again (SIGKILL) and kills a third time, spread over the
        submission period."""
        plan: list[tuple[float, str, Callable[[], None]]] = [
            (0.15, "SIGKILL a busy worker, restart it", self.bounce_busy_worker),
            (0.35, "restart nats-server (SIGTERM)", self.bounce_nats),
            (0.55, "SIGKILL a busy worker, restart it", self.bounce_busy_worker),
            (0.75, "restart nats-server (SIGKILL)", lambda: self.bounce_nats(kill=True)),
            (0.9, "SIGKILL a busy worker, restart it", self.bounce_busy_worker),
        ]
        start = time.monotonic()
        for at, what, action in plan:
            await asyncio.sleep(max(0.0, start + at * self.seconds - time.monotonic()))
            log(f"fault: {what}")
            # Off the main thread: a fork there while gRPC calls are in flight can crash the
            # child (see tests/faults/helpers.py FaultStack.spawn).
            await asyncio.to_thread(action)

    def bounce_busy_worker(self) -> None:
        """SIGKILLs a worker in the middle of a job (a video if one is running: those take
        longest), found through the database and the workers' "job claimed" log lines."""
        workers = self.services.workers
        victim = workers[0]
        engine = create_engine(self.deps.database_url)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                running = running_jobs(engine)
                busy = [w for w in workers if any(claimed_in(w.log_path, j) for j in running)]
                if busy:
                    victim = busy[0]
                    log(f"{victim.name} is in the middle of a job")
                    break
                time.sleep(0.2)
        finally:
            engine.dispose()
        victim.kill()
        time.sleep(2)
        victim.start()

    def bounce_nats(self, kill: bool = False) -> None:
        if kill:
            self.deps.kill_nats()
        else:
            self.deps.stop_nats()
        time.sleep(2)
        self.deps.start_nats()

    # --- the end -------------------------------------------------------------------------

    async def wait_all(self, grace: float) -> None:
        engine = create_engine(self.deps.database_url)
        try:
            deadline = time.monotonic() + grace
            while True:
                open_ = await asyncio.to_thread(count_open, engine)
                if open_ == 0:
                    return
                if time.monotonic() > deadline:
                    log(f"{open_} jobs still open after the {grace:.0f} s grace period")
                    return
                await asyncio.sleep(1)
        finally:
            engine.dispose()


def running_jobs(engine: Any) -> list[str]:
    """IDs of the soak's running jobs, videos first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM jobs WHERE owner = :o AND status = 2 ORDER BY kind DESC"),
            {"o": SUBJECT},
        )
        return [str(r.id) for r in rows]


def claimed_in(log_path: Any, job_id: str) -> bool:
    try:
        return f'"job claimed", "job_id": "{job_id}"' in log_path.read_text(errors="replace")
    except OSError:
        return False


def count_open(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM jobs WHERE owner = :o AND {ACTIVE_PREDICATE}"),
                {"o": SUBJECT},
            ).scalar_one()
        )


@dataclass
class Verdict:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    unrecorded_objects: int = 0
    retried: int = 0  # jobs that needed more than one attempt (a fault hit them)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    versions: dict[str, int] = field(default_factory=dict)  # job ID -> its last version


def account(deps: Dependencies, tally: Tally) -> Verdict:
    """Every submitted job against the database and the bucket."""
    engine = create_engine(deps.database_url)
    try:
        with engine.connect() as conn:
            jobs = {
                str(r.id): r
                for r in conn.execute(
                    text(
                        "SELECT id, status, attempt, error_code, version FROM jobs WHERE owner = :o"
                    ),
                    {"o": SUBJECT},
                )
            }
            outputs: dict[str, list[Any]] = collections.defaultdict(list)
            for r in conn.execute(
                text(
                    "SELECT o.job_id, o.key, o.byte_size FROM outputs o JOIN jobs j "
                    "ON j.id = o.job_id WHERE j.owner = :o"
                ),
                {"o": SUBJECT},
            ):
                outputs[str(r.job_id)].append(r)
    finally:
        engine.dispose()
    stored = list_objects(deps)
    verdict = Verdict(submitted=len(tally.submitted))
    for job in tally.submitted:
        row = jobs.get(job.job_id)
        recorded = outputs.get(job.job_id, [])
        if row is None or row.status not in FINISHED:
            verdict.lost += 1
            continue
        verdict.versions[job.job_id] = int(row.version)
        verdict.retried += row.attempt > 1
        objects = stored.get(job.job_id, {})
        unrecorded = objects.keys() - {r.key for r in recorded}
        verdict.unrecorded_objects += len(unrecorded)
        if row.status != job_pb2.JOB_STATUS_SUCCEEDED:
            verdict.failed += 1
            verdict.failures[job_pb2.ErrorCode.Name(row.error_code)] += 1
            if recorded or unrecorded:
                verdict.duplicated += 1
            continue
        verdict.succeeded += 1
        prefix = f"jobs/{job.job_id}/{row.attempt}/"
        if (
            len(recorded) > job.asked
            or unrecorded
            or any(not r.key.startswith(prefix) for r in recorded)
        ):
            verdict.duplicated += 1
        if any(objects.get(r.key) != r.byte_size for r in recorded):
            verdict.corrupt += 1
    return verdict


def list_objects(deps: Dependencies) -> dict[str, dict[str, int]]:
    """job ID -> {key: size} for every output object in the bucket."""
    s3 = deps.s3_client()
    found: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="media", Prefix="jobs/"):
        for item in page.get("Contents", ()):
            key = item["Key"]
            parts = key.split("/")
            if len(parts) == 4 and parts[3].startswith("output-"):
                found[parts[1]][key] = int(item["Size"])
    return found


async def check_events(deps: Dependencies, versions: dict[str, int]) -> tuple[int, int, int]:
    """(events read, (job, version) pairs stored twice, versions missing) in MEDIA_EVENTS, for
    the soak's finished jobs: each job's versions 1..last must be there once each."""
    ours = set(versions)
    nc = await nats.connect(deps.nats_url)
    seen: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    total = 0
    try:
        js = nc.jetstream()
        info = await js.stream_info(jetstream.EVENTS_STREAM)
        last = info.state.last_seq
        sub = await js.subscribe(
            jetstream.ALL_EVENTS,
            stream=jetstream.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            while total < info.state.messages:
                msg = await sub.next_msg(timeout=10)
                total += 1
                job = events_pb2.JobEvent.FromString(msg.data).job
                if job.id in ours:
                    seen[job.id][job.version] += 1
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    twice = sum(1 for counts in seen.values() for n in counts.values() if n > 1)
    missing = sum(
        len(set(range(1, last + 1)) - set(seen.get(job_id, ())))
        for job_id, last in versions.items()
    )
    return total, twice, missing


def main() -> int:
    jobs = int(env_number("SOAK_JOBS", 2000))
    seconds = env_number("SOAK_SECONDS", 240)
    grace = env_number("SOAK_GRACE_SECONDS", 180)
    worker_count = int(env_number("SOAK_WORKERS", 2))
    run_dir = default_run_dir() / "soak"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log(f"{jobs} jobs over {seconds:.0f} s, {worker_count} workers; stack under {run_dir}")
    secret = secrets.token_urlsafe(32)
    started = time.monotonic()
    deps = start_dependencies(run_dir, use_env=False)
    try:
        services = start_services(run_dir, deps, secret, workers=worker_count, extra_env=STACK_ENV)
        try:
            token = mint_token(secret, SUBJECT, ttl_seconds=int(seconds + grace) + 3600)
            tally = asyncio.run(Soak(deps, services, token, jobs, seconds).run(grace))
            verdict = account(deps, tally)
            events, twice, missing = asyncio.run(check_events(deps, verdict.versions))
        finally:
            services.stop()
    finally:
        deps.stop()
    log(
        f"done in {time.monotonic() - started:.0f} s; creates rejected {tally.rejected}; "
        f"jobs retried after a fault {verdict.retried}; failures by cause {dict(verdict.failures)}"
    )
    log(
        f"objects: corrupt {verdict.corrupt}, stored but not recorded "
        f"{verdict.unrecorded_objects}; events: {events} read, {twice} stored twice, "
        f"{missing} missing; watchers: {tally.watches}, {len(tally.watch_missed)} missed the end"
    )
    log(f"logs: {run_dir / 'logs'}")
    print(
        f"soak: submitted {verdict.submitted} succeeded {verdict.succeeded} "
        f"failed {verdict.failed} lost {verdict.lost} duplicated {verdict.duplicated}",
        flush=True,
    )
    return 0 if verdict.lost == verdict.duplicated == verdict.corrupt == 0 else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the stack on SIGTERM too
    sys.exit(main())
