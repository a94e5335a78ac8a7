"""The media worker against a real nats-server (JetStream) and a real S3 endpoint (moto's server),
with a small fake WorkerService standing in for job_service (the one boundary the worker calls).

The fake plays job_service's side of the protocol: ClaimJob starts a new attempt, a stale
attempt or a finished job is FAILED_PRECONDITION, and a retryable failure goes back to QUEUED
while attempts remain. Each test checks what the worker said to it, what it stored in S3 and how
it settled the JetStream message (what it sent to the message's ack subject).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import av
import boto3
import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from PIL import Image

from media.v1 import events_pb2, job_pb2, worker_service_pb2, worker_service_pb2_grpc
from services.common import jetstream
from services.common.errors import failed_precondition
from services.common.lifecycle import (
    CANCELED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Reason,
    status_name,
)
from services.media_worker.generators.base import (
    GeneratedFile,
    GenerationContext,
    GenerationError,
    GenerationResult,
    Generator,
)
from services.media_worker.settings import WorkerSettings
from services.media_worker.worker import MediaWorker
from tests.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

# Bounds that turn a hang into a failure; never a statement about how fast anything should be.
SAFETY_TIMEOUT = 60.0
TOKEN = "worker-test-token"
BUCKET = "media-worker-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(int(SAFETY_TIMEOUT / 0.1)):
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest_asyncio.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- the fake job_service ------------------------------------------------------------------


@dataclass
class FakeJob:
    id: str
    status: int = QUEUED
    attempt: int = 0
    progress: list[tuple[int, int, str]] = field(default_factory=list)  # (attempt, value, msg)
    completes: list[worker_service_pb2.CompleteJobRequest] = field(default_factory=list)
    claims: int = 0  # attempts started
    seq: int = 0  # stream sequence of its dispatch message
    cancel_on_progress: bool = False  # a client cancels as soon as progress shows up
    supersede_on_complete: bool = False  # a newer attempt took over just before CompleteJob
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def proto(self) -> job_pb2.Job:
        return job_pb2.Job(id=self.id, status=self.status, attempt=self.attempt)  # type: ignore[arg-type]


class FakeWorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, max_attempts: int = 3) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.max_attempts = max_attempts
        self.unavailable_claims = 0  # answer this many claims with UNAVAILABLE
        self.calls: list[tuple[str, str]] = []  # (method, job_id) of every call, answered or not

    def add(self, job_id: str, **kwargs: Any) -> FakeJob:
        job = FakeJob(job_id, **kwargs)
        self.jobs[job_id] = job
        return job

    async def _check(self, context: grpc.aio.ServicerContext, job_id: str) -> FakeJob:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        job = self.jobs.get(job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such job")
        assert job is not None
        return job

    async def ClaimJob(
        self, request: worker_service_pb2.ClaimJobRequest, context: grpc.aio.ServicerContext
    ) -> worker_service_pb2.ClaimJobResponse:
        self.calls.append(("ClaimJob", request.job_id))
        job = await self._check(context, request.job_id)
        if self.unavailable_claims > 0:
            self.unavailable_claims -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "job_service is restarting")
        if job.status in FINISHED:
            await finished(context, job.status)
        if job.attempt >= self.max_attempts:
            job.status = FAILED
            await finished(context, job.status)
        job.claims += 1
        job.attempt += 1
        job.status = RUNNING
        return worker_service_pb2.ClaimJobResponse(job=job.proto())

    async def ReportProgress(
        self, request: worker_service_pb2.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> worker_service_pb2.ReportProgressResponse:
        self.calls.append(("ReportProgress", request.job_id))
        job = await self._check(context, request.job_id)
        if request.attempt < 1:  # claiming is ClaimJob's
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "attempt must be at least 1")
        if job.status != RUNNING or request.attempt != job.attempt:
            await refuse(context, job)
        job.progress.append((request.attempt, request.progress, request.message))
        if job.cancel_on_progress:
            job.status = CANCELED
            job.done.set()
        return worker_service_pb2.ReportProgressResponse(job=job.proto())

    async def CompleteJob(
        self, request: worker_service_pb2.CompleteJobRequest, context: grpc.aio.ServicerContext
    ) -> worker_service_pb2.CompleteJobResponse:
        self.calls.append(("CompleteJob", request.job_id))
        job = await self._check(context, request.job_id)
        if job.supersede_on_complete:
            job.supersede_on_complete = False
            job.attempt += 1
            job.done.set()
        if job.status != RUNNING or request.attempt != job.attempt:
            await refuse(context, job)
        job.completes.append(request)
        if request.WhichOneof("result") == "success":
            job.status = SUCCEEDED
        elif request.failure.retryable and job.attempt < self.max_attempts:
            job.status = QUEUED
        else:
            job.status = FAILED
        if job.status in FINISHED:
            job.done.set()
        return worker_service_pb2.CompleteJobResponse(job=job.proto())


async def finished(context: grpc.aio.ServicerContext, status: int) -> None:
    """Refuses a call the way job_service does, with the job's status in an ErrorInfo."""
    refusal = failed_precondition("job is finished", Reason.JOB_FINISHED, status_name(status))
    await context.abort_with_status(refusal.to_status())


async def refuse(context: grpc.aio.ServicerContext, job: FakeJob) -> None:
    """Refuses a call from an attempt that is not the job's current one."""
    if job.status in FINISHED:
        await finished(context, job.status)
    refusal = failed_precondition("attempt is stale", Reason.ATTEMPT_STALE, status_name(job.status))
    await context.abort_with_status(refusal.to_status())


@pytest_asyncio.fixture(scope="session")
async def fake() -> AsyncIterator[tuple[FakeWorkerService, str]]:
    service = FakeWorkerService()
    server = grpc.aio.server()
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


# --- test generators ---------------------------------------------------------------------------


class Boom:
    name = "boom"

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        raise RuntimeError("the model caught fire")


class Flaky:
    """A retryable failure every time (rate limited)."""

    name = "flaky"

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        raise GenerationError(job_pb2.ERROR_CODE_RATE_LIMITED, "429 from upstream", retryable=True)


class Endless:
    """Reports progress until cancelled; remembers that it was."""

    name = "endless"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        self.started.set()
        try:
            for step in range(10_000):
                await ctx.progress(step % 99, f"step {step}")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("never finishes")


class Lying:
    """Claims a PNG but writes a JPEG: the probe must catch it."""

    name = "lying"

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        path = ctx.workdir / "output-0.png"
        Image.new("RGB", (8, 8)).save(path, "JPEG")
        return GenerationResult(files=[GeneratedFile(path, "image/png")], model="lying")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_env(s3_endpoint: str) -> Iterator[None]:
    values = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with mock.patch.dict(os.environ, values):
        yield


def make_settings(
    nats_url: str,
    s3_endpoint: str,
    job_service_addr: str,
    extra_env: dict[str, str] | None = None,
    **overrides: Any,
) -> WorkerSettings:
    env = {
        "WORKER_TOKEN": TOKEN,
        "NATS_URL": nats_url,
        "JOB_SERVICE_ADDR": job_service_addr,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": BUCKET,
        "S3_CREATE_BUCKET": "true",
        "GENERATOR": "local",
        "ACK_WAIT_SECONDS": "6",
        "RETRY_BASE_DELAY_SECONDS": "0.2",
        "RETRY_MAX_DELAY_SECONDS": "0.5",
        "PROGRESS_INTERVAL_SECONDS": "0.05",
        "FETCH_TIMEOUT_SECONDS": "1",
        "RPC_ATTEMPTS": "2",
        "LOCAL_VIDEO_LONG_SIDE": "256",
        "SHUTDOWN_GRACE_SECONDS": "10",
        **(extra_env or {}),
    }
    with mock.patch.dict(os.environ, env):
        settings = WorkerSettings.from_env()
    return dataclasses.replace(settings, **overrides)


@dataclass
class Env:
    nats: NatsServer
    fake: FakeWorkerService
    s3_endpoint: str
    job_service_addr: str
    js: JetStreamContext
    workers: list[MediaWorker] = field(default_factory=list)
    # What workers sent to each dispatch message's ack subject, by stream sequence, in order:
    # b"+ACK", b"+TERM", b"-NAK" (at once) or b'-NAK {"delay": ...}'; in-progress acks left out.
    told: dict[int, list[bytes]] = field(default_factory=dict)

    async def worker(
        self,
        generator: Generator | None = None,
        extra_env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> MediaWorker:
        settings = make_settings(
            self.nats.url, self.s3_endpoint, self.job_service_addr, extra_env, **overrides
        )
        worker = MediaWorker(settings, generator)
        async with asyncio.timeout(SAFETY_TIMEOUT):
            await worker.start()
        self.workers.append(worker)
        return worker

    async def dispatch(
        self, kind: str, params: job_pb2.ImageParams | job_pb2.VideoParams, **job: Any
    ) -> FakeJob:
        job_id = str(uuid.uuid4())
        fake_job = self.fake.add(job_id, **job)
        message = events_pb2.JobDispatch(job_id=job_id)
        if kind == "image":
            message.kind = job_pb2.MEDIA_KIND_IMAGE
            message.image.CopyFrom(params)
        else:
            message.kind = job_pb2.MEDIA_KIND_VIDEO
            message.video.CopyFrom(params)
        fake_job.seq = await self.publish(kind, message.SerializeToString())
        return fake_job

    async def publish(self, kind: str, data: bytes) -> int:
        """Publishes a dispatch message as is; its stream sequence."""
        ack = await self.js.publish(jetstream.dispatch_subject(kind), data)
        return ack.seq

    async def settled(self, seq: int, count: int = 1) -> list[bytes]:
        """What message `seq` was told, once it has been told `count` things."""
        await wait_for(lambda: len(self.told.get(seq, [])) >= count)
        return self.told[seq]

    async def record_settlements(self, nc: nats.NATS) -> None:
        async def on_ack(msg: Msg) -> None:
            if msg.data != Msg.Ack.Progress:
                # The ack subject is the delivery's reply subject: it names the message.
                meta = Msg.Metadata._from_reply(msg.subject)
                if meta.stream == jetstream.DISPATCH_STREAM:
                    # nats-py acks with an empty payload, which JetStream reads as +ACK.
                    told = msg.data or Msg.Ack.Ack
                    self.told.setdefault(meta.sequence.stream, []).append(told)

        await nc.subscribe("$JS.ACK.>", cb=on_ack)
        await nc.flush()

    async def queue_empty(self) -> None:
        """Every dispatch message was acked (a work-queue stream drops acked messages)."""
        async with asyncio.timeout(SAFETY_TIMEOUT):
            while True:
                info = await self.js.stream_info(jetstream.DISPATCH_STREAM)
                if info.state.messages == 0:
                    return
                await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def env(
    nats_server: NatsServer,
    fake: tuple[FakeWorkerService, str],
    s3_endpoint: str,
    aws_env: None,
) -> AsyncIterator[Env]:
    service, addr = fake
    service.unavailable_claims = 0
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    environment = Env(nats_server, service, s3_endpoint, addr, js)
    await environment.record_settlements(nc)
    try:
        yield environment
    finally:
        for worker in environment.workers:
            await worker.stop()
        # Leave no message behind for the next test.
        await js.purge_stream(jetstream.DISPATCH_STREAM)
        await nc.close()


async def wait_done(job: FakeJob) -> None:
    async with asyncio.timeout(SAFETY_TIMEOUT):
        await job.done.wait()


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]]) -> None:
    async with asyncio.timeout(SAFETY_TIMEOUT):
        while True:
            value = predicate()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await asyncio.sleep(0.05)


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


# --- tests -----------------------------------------------------------------------------------


async def test_image_job_is_claimed_generated_stored_completed_and_acked(env: Env) -> None:
    await env.worker()
    job = await env.dispatch(
        "image",
        job_pb2.ImageParams(
            prompt="a lighthouse",
            size="512x512",
            format=job_pb2.IMAGE_FORMAT_WEBP,
            number_of_images=2,
        ),
    )
    await wait_done(job)
    await env.queue_empty()
    assert job.status == SUCCEEDED and job.claims == 1
    (complete,) = job.completes
    assert complete.attempt == 1
    success = complete.success
    assert success.model == "local"
    assert success.generation_time.ToNanoseconds() > 0
    assert [o.index for o in success.outputs] == [0, 1]
    s3 = s3_client(env.s3_endpoint)
    for output in success.outputs:
        assert output.bucket == BUCKET
        assert output.key == f"jobs/{job.id}/{job.attempt}/output-{output.index}.webp"
        assert output.content_type == "image/webp"
        assert (output.width, output.height) == (512, 512)
        stored = await asyncio.to_thread(s3.get_object, Bucket=BUCKET, Key=output.key)
        data = stored["Body"].read()
        assert stored["ContentType"] == "image/webp"
        assert len(data) == output.byte_size
        assert hashlib.sha256(data).hexdigest() == output.sha256
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("WEBP", (512, 512))


async def test_video_job_reports_progress_under_its_attempt(env: Env) -> None:
    await env.worker()
    job = await env.dispatch(
        "video",
        job_pb2.VideoParams(
            prompt="waves", aspect_ratio=job_pb2.ASPECT_RATIO_9_16, duration_seconds=4
        ),
    )
    await wait_done(job)
    await env.queue_empty()
    assert job.status == SUCCEEDED
    assert job.progress, "a video takes long enough for progress reports"
    assert all(attempt == 1 for attempt, _, _ in job.progress)
    values = [value for _, value, _ in job.progress]
    assert values == sorted(values) and all(0 <= v < 100 for v in values)
    (output,) = job.completes[0].success.outputs
    assert output.content_type == "video/mp4"
    assert (output.width, output.height) == (144, 256)
    assert output.duration_seconds == pytest.approx(4.0, abs=0.05)
    stored = await asyncio.to_thread(
        s3_client(env.s3_endpoint).get_object, Bucket=BUCKET, Key=output.key
    )
    with av.open(io.BytesIO(stored["Body"].read())) as container:
        assert container.streams.video[0].codec_context.name == "h264"


async def test_input_image_is_downloaded_and_used(env: Env) -> None:
    await env.worker()
    source = io.BytesIO()
    Image.new("RGB", (100, 100), (0, 0, 255)).save(source, "PNG")
    key = f"inputs/{uuid.uuid4()}.png"
    s3 = s3_client(env.s3_endpoint)
    await asyncio.to_thread(
        s3.put_object, Bucket=BUCKET, Key=key, Body=source.getvalue(), ContentType="image/png"
    )
    params = job_pb2.ImageParams(prompt="make it blue", size="256x256")
    params.input_image.bucket = BUCKET
    params.input_image.key = key
    job = await env.dispatch("image", params)
    await wait_done(job)
    output = job.completes[0].success.outputs[0]
    stored = await asyncio.to_thread(s3.get_object, Bucket=BUCKET, Key=output.key)
    with Image.open(io.BytesIO(stored["Body"].read())) as image:
        red, green, blue = image.convert("RGB").getpixel((1, 1))
    assert blue > 150 and blue > red + 60 and blue > green + 60


async def test_missing_input_image_fails_the_job_without_retry(env: Env) -> None:
    await env.worker()
    params = job_pb2.ImageParams(prompt="x", size="256x256")
    params.input_image.bucket = BUCKET
    params.input_image.key = "inputs/does-not-exist.png"
    job = await env.dispatch("image", params)
    await wait_done(job)
    await env.queue_empty()
    failure = job.completes[0].failure
    assert job.status == FAILED and not failure.retryable
    assert failure.code == job_pb2.ERROR_CODE_INVALID_REQUEST


async def test_generator_crash_fails_the_job_and_the_worker_keeps_going(env: Env) -> None:
    await env.worker(Boom())
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"))
    await wait_done(job)
    await env.queue_empty()
    (complete,) = job.completes
    assert job.status == FAILED
    assert complete.failure.code == job_pb2.ERROR_CODE_GENERATION_FAILED
    # The exception's text goes to the log, not to the client.
    assert (
        complete.failure.message == "the generator failed unexpectedly; the job will not be retried"
    )
    assert not complete.failure.retryable
    # Still consuming: the next job is handled too.
    second = await env.dispatch("image", job_pb2.ImageParams(prompt="y"))
    await wait_done(second)
    assert second.status == FAILED


async def test_retryable_failure_is_nakked_and_redelivered_until_attempts_run_out(env: Env) -> None:
    await env.worker(Flaky())
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"))
    await wait_done(job)
    await env.queue_empty()
    assert job.status == FAILED
    assert job.claims == env.fake.max_attempts
    assert [c.attempt for c in job.completes] == list(range(1, env.fake.max_attempts + 1))
    assert all(c.failure.code == job_pb2.ERROR_CODE_RATE_LIMITED for c in job.completes)
    assert all(c.failure.retryable for c in job.completes)
    # Handed back with a backoff delay while attempts were left; acked once the job failed.
    *retries, last = await env.settled(job.seq, count=env.fake.max_attempts)
    assert len(retries) == env.fake.max_attempts - 1
    assert all(told.startswith(b'-NAK {"delay": ') for told in retries), retries
    assert last == b"+ACK"


async def test_bad_output_is_a_generation_failure_and_nothing_is_stored(env: Env) -> None:
    await env.worker(Lying())
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"))
    await wait_done(job)
    failure = job.completes[0].failure
    assert failure.code == job_pb2.ERROR_CODE_GENERATION_FAILED
    listed = await asyncio.to_thread(
        s3_client(env.s3_endpoint).list_objects_v2, Bucket=BUCKET, Prefix=f"jobs/{job.id}/"
    )
    assert listed.get("KeyCount", 0) == 0


async def test_upload_failure_is_retryable_until_attempts_run_out(env: Env) -> None:
    settings = make_settings(env.nats.url, env.s3_endpoint, env.job_service_addr)
    missing_bucket = dataclasses.replace(settings.s3, bucket="no-such-bucket", create_bucket=False)
    await env.worker(s3=missing_bucket)
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x", size="256x256"))
    await wait_done(job)
    await env.queue_empty()
    assert job.status == FAILED and job.claims == env.fake.max_attempts
    for complete in job.completes:
        assert complete.failure.code == job_pb2.ERROR_CODE_UPLOAD_FAILED
        assert complete.failure.retryable
        assert complete.failure.message.startswith("the output could not be stored")
        assert "no-such-bucket" not in complete.failure.message


async def test_finished_job_is_acked_without_generating(env: Env) -> None:
    generator = Endless()
    await env.worker(generator)
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"), status=CANCELED)
    await env.queue_empty()
    assert await env.settled(job.seq) == [b"+ACK"]
    assert job.claims == 0 and not job.completes
    assert [c for c in env.fake.calls if c[1] == job.id] == [("ClaimJob", job.id)]
    assert not generator.started.is_set()


async def test_unknown_job_is_acked_and_undecodable_bytes_are_terminated(env: Env) -> None:
    await env.worker()
    message = events_pb2.JobDispatch(job_id="not-a-job", image=job_pb2.ImageParams(prompt="x"))
    unknown = await env.publish("image", message.SerializeToString())
    garbage = await env.publish("image", b"\xff\xffnot a protobuf")
    await env.queue_empty()
    # NOT_FOUND: dropped for good, neither redelivered nor terminated.
    assert await env.settled(unknown) == [b"+ACK"]
    assert [c for c in env.fake.calls if c[1] == "not-a-job"] == [("ClaimJob", "not-a-job")]
    # Redelivering bytes that never parse would loop forever; job_service never hears of them.
    assert await env.settled(garbage) == [b"+TERM"]


async def test_cancel_during_generation_stops_it_and_acks(env: Env) -> None:
    generator = Endless()
    await env.worker(generator)
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"), cancel_on_progress=True)
    async with asyncio.timeout(SAFETY_TIMEOUT):
        await generator.cancelled.wait()
    await env.queue_empty()
    assert job.status == CANCELED and not job.completes
    assert await env.settled(job.seq) == [b"+ACK"]


async def test_claim_while_job_service_is_unavailable_is_redelivered(env: Env) -> None:
    await env.worker()
    env.fake.unavailable_claims = 3  # more than one claim's own retries (RPC_ATTEMPTS=2)
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x", size="256x256"))
    await wait_done(job)
    await env.queue_empty()
    assert job.status == SUCCEEDED and job.claims == 1
    # The first delivery's claim gave up (both tries UNAVAILABLE): redelivered after a delay.
    nak, ack = await env.settled(job.seq, count=2)
    assert nak.startswith(b'-NAK {"delay": ') and ack == b"+ACK"


async def test_shutdown_hands_running_jobs_back(env: Env) -> None:
    generator = Endless()
    first = await env.worker(generator, {"SHUTDOWN_GRACE_SECONDS": "0.2"})
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="x"))
    async with asyncio.timeout(SAFETY_TIMEOUT):
        await generator.started.wait()
    await first.stop()
    env.workers.remove(first)
    assert generator.cancelled.is_set()
    # The nak makes the message available at once; a second worker finishes it.
    await env.worker()
    await wait_done(job)
    assert job.status == SUCCEEDED
    assert job.claims == 2 and job.completes[0].attempt == 2
    assert await env.settled(job.seq, count=2) == [b"-NAK", b"+ACK"]


async def test_only_as_many_jobs_as_slots_are_taken(env: Env) -> None:
    generator = Endless()
    await env.worker(generator, {"SHUTDOWN_GRACE_SECONDS": "0.2"}, concurrency=2, kinds=("image",))
    jobs = [await env.dispatch("image", job_pb2.ImageParams(prompt=str(i))) for i in range(4)]
    await wait_for(lambda: sum(j.claims for j in jobs) == 2)
    # The other two stay in the stream, unclaimed, for other workers.
    await asyncio.sleep(0.5)
    assert sum(j.claims for j in jobs) == 2
    info = await env.js.consumer_info(jetstream.DISPATCH_STREAM, jetstream.worker_consumer("image"))
    assert info.num_ack_pending == 2 and info.num_pending == 2


async def test_worker_survives_a_nats_restart(env: Env) -> None:
    await env.worker()
    await env.nats.stop()
    await asyncio.sleep(1.0)
    await env.nats.start()
    # The test's own connection reconnects too; publish once it has.
    await wait_for(lambda: env.js._nc.is_connected)
    job = await env.dispatch("image", job_pb2.ImageParams(prompt="after restart", size="256x256"))
    await wait_done(job)
    await env.queue_empty()
    assert job.status == SUCCEEDED


# --- outputs no record points to ---------------------------------------------------------------


async def put_object(env: Env, key: str, body: bytes = b"left over") -> None:
    s3 = s3_client(env.s3_endpoint)
    await asyncio.to_thread(s3.put_object, Bucket=BUCKET, Key=key, Body=body)


async def stored_keys(env: Env, job_id: str) -> set[str]:
    s3 = s3_client(env.s3_endpoint)
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=BUCKET, Prefix=f"jobs/{job_id}/")
    return {item["Key"] for item in listed.get("Contents", ())}


async def test_a_new_attempt_deletes_what_a_dead_attempt_stored(env: Env) -> None:
    await env.worker()
    job_id = str(uuid.uuid4())
    # Attempt 1 died after uploading one of its outputs; the job's input image is not an output.
    await put_object(env, f"jobs/{job_id}/1/output-0.png")
    await put_object(env, f"jobs/{job_id}/input")
    job = env.fake.add(job_id, status=RUNNING, attempt=1)
    message = events_pb2.JobDispatch(job_id=job_id, image=job_pb2.ImageParams(prompt="x"))
    seq = await env.publish("image", message.SerializeToString())
    await wait_done(job)
    (complete,) = job.completes
    assert job.status == SUCCEEDED and complete.attempt == 2
    # Gone before attempt 2 stored anything, so already when its result is recorded.
    recorded = {o.key for o in complete.success.outputs}
    assert await stored_keys(env, job_id) == recorded | {f"jobs/{job_id}/input"}
    assert await env.settled(seq) == [b"+ACK"]


async def test_a_refused_result_leaves_no_objects_behind(env: Env) -> None:
    await env.worker()
    job = await env.dispatch(
        "image", job_pb2.ImageParams(prompt="x", number_of_images=3), supersede_on_complete=True
    )
    await wait_done(job)
    assert not job.completes  # refused: attempt 1 was stale by then

    async def attempt_1_gone() -> bool:
        return not await stored_keys(env, job.id)

    await wait_for(attempt_1_gone)
    # The message is left to the attempt that took over: not acked, still pending.
    consumer = await env.js.consumer_info(
        jetstream.DISPATCH_STREAM, jetstream.worker_consumer("image")
    )
    assert consumer.num_ack_pending == 1
    assert job.seq not in env.told


@pytest.mark.parametrize("status", [CANCELED, FAILED], ids=["canceled", "failed"])
async def test_a_job_that_ended_without_outputs_loses_what_a_dead_attempt_stored(
    env: Env, status: int
) -> None:
    await env.worker()
    job_id = str(uuid.uuid4())
    await put_object(env, f"jobs/{job_id}/1/output-0.mp4")
    await put_object(env, f"jobs/{job_id}/input")
    env.fake.add(job_id, status=status, attempt=1)
    message = events_pb2.JobDispatch(job_id=job_id, video=job_pb2.VideoParams(prompt="x"))
    seq = await env.publish("video", message.SerializeToString())
    await env.queue_empty()
    assert await env.settled(seq) == [b"+ACK"]

    async def outputs_gone() -> bool:
        return await stored_keys(env, job_id) == {f"jobs/{job_id}/input"}

    await wait_for(outputs_gone)


async def test_a_redelivered_message_of_a_succeeded_job_touches_nothing(env: Env) -> None:
    await env.worker()
    job_id = str(uuid.uuid4())
    await put_object(env, f"jobs/{job_id}/1/output-0.png")
    env.fake.add(job_id, status=SUCCEEDED, attempt=1)
    message = events_pb2.JobDispatch(job_id=job_id, image=job_pb2.ImageParams(prompt="x"))
    seq = await env.publish("image", message.SerializeToString())
    await env.queue_empty()
    assert await env.settled(seq) == [b"+ACK"]
    assert await stored_keys(env, job_id) == {f"jobs/{job_id}/1/output-0.png"}
