"""The attacks of the hardening review, measured: memory and answer times, not pass/fail.

    python -m bench.attacks      (make bench-attacks)

On a stack of its own (one worker, per-user limits off so that one user can send the load):
- large inputs: 24 parallel CreateJob calls from one user, each with a valid 9.5 MB PNG inline,
  and (where the API has it) the same 24 images through CreateInputUpload and a presigned PUT;
  prints job_service's peak RSS and the answers.
- a frozen S3 (moto SIGSTOPped): 16 creates with a tiny input image from one user, while another
  user reads (GetJob, ListJobs); prints their answer times and job_service's readiness.
- a decompression bomb: a PNG of ~160 KB that decodes to 50 megapixels; prints the answer and
  the worker's peak RSS.
The figures are for comparing two versions on one machine; the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import signal
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from devstack.deps import start_dependencies
from devstack.services import Services, start_services
from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common.auth import bearer_metadata, mint_token

MIB = 1024 * 1024
# One user sends everything: the per-user limits would stop the load before it measures anything.
STACK_ENV = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_ACTIVE_JOBS_PER_USER": "0"}


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process, MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def noise_png(target_bytes: int) -> bytes:
    """A PNG of random pixels (it does not compress) of about target_bytes."""
    side = int((target_bytes / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def bomb_png(side: int = 7071) -> bytes:
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def summary(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    ordered = sorted(seconds)
    return f"p50 {statistics.median(ordered):6.2f} s  max {ordered[-1]:6.2f} s  (n={len(ordered)})"


async def timed(call: Callable[[], Awaitable[object]]) -> tuple[str, float]:
    started = time.monotonic()
    try:
        await call()
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    return code, time.monotonic() - started


def codes(results: list[tuple[str, float]]) -> str:
    counted: dict[str, int] = {}
    for code, _ in results:
        counted[code] = counted.get(code, 0) + 1
    return ", ".join(f"{code} {n}" for code, n in sorted(counted.items()))


class Attack:
    def __init__(self, services: Services, secret: str, moto_pid: int, s3: Any) -> None:
        self.services = services
        self.moto_pid = moto_pid
        self.s3 = s3  # the test's own client of the stack's S3
        options = [("grpc.max_send_message_length", 64 * MIB)]
        self.channel = grpc.aio.insecure_channel(services.job_service_addr, options=options)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.attacker = bearer_metadata(mint_token(secret, "attacker"))
        self.bystander = bearer_metadata(mint_token(secret, "bystander"))

    @property
    def js_pid(self) -> int:
        pid = self.services.job_service.pid
        assert pid is not None
        return pid

    @property
    def worker_pid(self) -> int:
        pid = self.services.workers[0].pid
        assert pid is not None
        return pid

    def pause_workers(self, paused: bool) -> None:
        for worker in self.services.workers:
            if worker.pid is not None:
                os.kill(worker.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    async def create(self, image: job_pb2.InputImage) -> job_pb2.Job:
        request = job_service_pb2.CreateJobRequest(
            image=job_pb2.ImageParams(prompt="attack", size="256x256", input_image=image)
        )
        response = await self.jobs.CreateJob(request, metadata=self.attacker, timeout=60)
        return response.job

    async def cancel_all(self) -> None:
        request = job_service_pb2.ListJobsRequest(page_size=100)
        while True:
            page = await self.jobs.ListJobs(request, metadata=self.attacker, timeout=30)
            for job in page.jobs:
                if job.status in (job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING):
                    await self.jobs.CancelJob(
                        job_service_pb2.CancelJobRequest(job_id=job.id),
                        metadata=self.attacker,
                        timeout=30,
                    )
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def wait_finished(self, job_id: str, seconds: float = 120.0) -> job_pb2.Job:
        deadline = time.monotonic() + seconds
        while True:
            job = (
                await self.jobs.GetJob(
                    job_service_pb2.GetJobRequest(job_id=job_id), metadata=self.attacker
                )
            ).job
            if (
                job.status
                in (
                    job_pb2.JOB_STATUS_SUCCEEDED,
                    job_pb2.JOB_STATUS_FAILED,
                    job_pb2.JOB_STATUS_CANCELED,
                )
                or time.monotonic() > deadline
            ):
                return job
            await asyncio.sleep(0.5)

    # --- the attacks ----------------------------------------------------------------------

    async def decompression_bomb(self) -> None:
        data = bomb_png()
        before = rss_mib(self.worker_pid)
        result = await timed(lambda: self.create(job_pb2.InputImage(data=data)))
        print(
            f"bomb ({len(data) // 1024} KiB PNG, 7071x7071): CreateJob {result[0]} "
            f"in {result[1]:.2f} s"
        )
        if result[0] == "OK":
            page = await self.jobs.ListJobs(
                job_service_pb2.ListJobsRequest(page_size=1), metadata=self.attacker
            )
            job = await self.wait_finished(page.jobs[0].id)
            print(f"  the job ended {job_pb2.JobStatus.Name(job.status)}: {job.error.message!r}")
        after = rss_mib(self.worker_pid)
        print(f"  worker RSS {before[0]:.0f} MiB before, peak {after[1]:.0f} MiB")
        await self._stored_bomb(data)

    async def _stored_bomb(self, data: bytes) -> None:
        """The same bomb put behind a job's input key in storage directly (bypassing the
        create's check): what the worker does with it."""
        self.pause_workers(True)
        try:
            job = await self.create(job_pb2.InputImage(data=tiny_png()))
            stored = job.image.input_image
            await asyncio.to_thread(
                self.s3.put_object, Bucket=stored.bucket, Key=stored.key, Body=data
            )
        finally:
            self.pause_workers(False)
        job = await self.wait_finished(job.id)
        after = rss_mib(self.worker_pid)
        print(
            f"  the same bomb swapped into storage behind a job: the job ended "
            f"{job_pb2.JobStatus.Name(job.status)}; worker peak {after[1]:.0f} MiB"
        )

    async def large_inputs(self) -> None:
        data = noise_png(int(9.5 * 1_000_000))
        self.pause_workers(True)
        try:
            start = rss_mib(self.js_pid)
            results = await asyncio.gather(
                *(timed(lambda: self.create(job_pb2.InputImage(data=data))) for _ in range(24))
            )
            await asyncio.sleep(5)
            end = rss_mib(self.js_pid)
            print(
                f"24 parallel inline creates of {len(data) / MIB:.1f} MiB: {codes(results)}; "
                f"answers {summary([s for _, s in results])}"
            )
            print(
                f"  job_service RSS {start[0]:.0f} MiB before, peak {end[1]:.0f} MiB, "
                f"{end[0]:.0f} MiB 5 s after"
            )
            if hasattr(self.jobs, "CreateInputUpload"):
                await self._uploads(data)
            await self.cancel_all()
        finally:
            self.pause_workers(False)

    async def _uploads(self, data: bytes) -> None:
        start = rss_mib(self.js_pid)

        async def one() -> None:
            upload = await self.jobs.CreateInputUpload(
                job_service_pb2.CreateInputUploadRequest(
                    mime_type="image/png", byte_size=len(data)
                ),
                metadata=self.attacker,
            )
            request = urllib.request.Request(
                upload.url, data=data, method="PUT", headers=dict(upload.headers)
            )
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=60)
            await self.create(job_pb2.InputImage(upload_id=upload.upload_id))

        results = await asyncio.gather(*(timed(one) for _ in range(24)))
        end = rss_mib(self.js_pid)
        print(
            f"24 parallel uploads + creates by reference: {codes(results)}; "
            f"answers {summary([s for _, s in results])}"
        )
        print(f"  job_service RSS {start[0]:.0f} MiB before, peak {end[1]:.0f} MiB")

    async def frozen_storage(self) -> None:
        existing = await self.jobs.CreateJob(
            job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(prompt="mine")),
            metadata=self.bystander,
        )
        self.pause_workers(True)
        os.kill(self.moto_pid, signal.SIGSTOP)
        reads: list[tuple[str, float]] = []
        ready: list[str] = []
        try:
            creates = [
                asyncio.ensure_future(
                    timed(lambda: self.create(job_pb2.InputImage(data=tiny_png())))
                )
                for _ in range(16)
            ]
            await asyncio.sleep(1.0)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                reads.append(
                    await timed(
                        lambda: self.jobs.GetJob(
                            job_service_pb2.GetJobRequest(job_id=existing.job.id),
                            metadata=self.bystander,
                            timeout=10,
                        )
                    )
                )
                reads.append(
                    await timed(
                        lambda: self.jobs.ListJobs(
                            job_service_pb2.ListJobsRequest(), metadata=self.bystander, timeout=10
                        )
                    )
                )
                try:
                    reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    ready.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                except grpc.aio.AioRpcError as exc:
                    ready.append(exc.code().name)
                await asyncio.sleep(0.25)
            print(
                f"S3 frozen: another user's GetJob/ListJobs: {codes(reads)}; "
                f"answers {summary([s for _, s in reads])}"
            )
            print(f"  job_service readiness while frozen: {sorted(set(ready))}")
        finally:
            os.kill(self.moto_pid, signal.SIGCONT)
        done = await asyncio.gather(*creates)
        print(
            f"  the 16 creates with an input image: {codes(done)}; "
            f"answers {summary([s for _, s in done])}"
        )
        self.pause_workers(False)
        await self.cancel_all()


async def run(services: Services, secret: str, moto_pid: int, s3: Any) -> None:
    attack = Attack(services, secret, moto_pid, s3)
    try:
        await attack.decompression_bomb()
        await attack.large_inputs()
        await attack.frozen_storage()
    finally:
        await attack.channel.close()


def main() -> None:
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
        root = Path(tmp)
        deps = start_dependencies(root / "deps")
        try:
            assert deps.s3 is not None and deps.s3.pid is not None, "needs the local S3"
            services = start_services(root / "run", deps, secret, workers=1, extra_env=STACK_ENV)
            try:
                asyncio.run(run(services, secret, deps.s3.pid, deps.s3_client()))
            finally:
                services.stop()
        finally:
            deps.stop()


if __name__ == "__main__":
    main()
