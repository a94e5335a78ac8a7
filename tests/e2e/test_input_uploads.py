"""Large input images bypass the gRPC message: CreateInputUpload returns a presigned PUT URL, a
client (a browser, mediactl) PUTs the image to it and CreateJob references the upload, which
job_service checks and copies inside S3. Around it: inline images only up to
MAX_INLINE_IMAGE_BYTES, a per-process budget of inline image bytes in flight, a small message
limit that unauthenticated callers hit before any handler runs, and a cap on calls in flight.

The session stack serves most tests; the budget and the cap get a stack of their own (its own
NATS and database, the shared S3 with a bucket of its own) started with small limits.
"""

from __future__ import annotations

import asyncio
import io
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import sqlalchemy as sa
from google.protobuf import json_format
from google.rpc import error_details_pb2
from PIL import Image

from devstack.deps import Dependencies, NatsServer
from devstack.services import Services, health_serving, start_services
from media.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common import keys
from services.common.auth import bearer_metadata, mint_token
from services.common.config import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import details_of, field_violations
from services.common.images import MAX_INPUT_PIXELS
from services.job_service.settings import MAX_INLINE_IMAGE_BYTES
from services.media_worker.generators.local import render_image
from services.mediactl.main import main as mediactl
from tests.conftest import workers_paused
from tests.e2e.helpers import fetch, wait_terminal
from tests.e2e.test_input_bombs import bomb
from tests.servers import own_dependencies
from tests.unit.test_validation import png

pytestmark = pytest.mark.e2e

Metadata = tuple[tuple[str, str], ...]
TIMEOUT = 30  # a guard against hanging, not a timing assertion
FIELD = "image.input_image.upload_id"


def large_png() -> bytes:
    """A PNG over MAX_INLINE_IMAGE_BYTES (so it can only be uploaded): its top half solid red,
    which a job's output shows when the worker used it, its bottom half noise (which does not
    compress)."""
    width, height = 1000, 1000
    image = Image.new("RGB", (width, height), (250, 0, 0))
    noise = Image.frombytes("RGB", (width, height // 2), os.urandom(width * height // 2 * 3))
    image.paste(noise, (0, height // 2))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    data = out.getvalue()
    assert MAX_INLINE_IMAGE_BYTES < len(data) < 10 * 2**20
    return data


def _put(url: str, headers: dict[str, str], body: bytes) -> int:
    """What a browser does with the URL: a plain HTTP PUT, no S3 client."""
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return int(response.status)


async def put(url: str, headers: dict[str, str], body: bytes) -> int:
    return await asyncio.to_thread(_put, url, headers, body)


async def new_upload(
    jobs: job_service_pb2_grpc.JobServiceStub,
    who: Metadata,
    mime_type: str,
    byte_size: int,
) -> job_service_pb2.CreateInputUploadResponse:
    request = job_service_pb2.CreateInputUploadRequest(mime_type=mime_type, byte_size=byte_size)
    response: job_service_pb2.CreateInputUploadResponse = await jobs.CreateInputUpload(
        request, metadata=who, timeout=TIMEOUT
    )
    return response


async def uploaded(
    jobs: job_service_pb2_grpc.JobServiceStub, who: Metadata, data: bytes, mime: str = "image/png"
) -> str:
    """Uploads `data` the way a client does; returns the upload_id."""
    upload = await new_upload(jobs, who, mime, len(data))
    assert await put(upload.url, dict(upload.headers), data) == 200
    return upload.upload_id


def with_upload(upload_id: str, request_id: str = "", prompt: str = "edit") -> dict:
    return {
        "request_id": request_id,
        "image": job_pb2.ImageParams(
            prompt=prompt, size="256x256", input_image=job_pb2.InputImage(upload_id=upload_id)
        ),
    }


async def create(
    jobs: job_service_pb2_grpc.JobServiceStub, who: Metadata, **kw: object
) -> job_service_pb2.CreateJobResponse:
    response: job_service_pb2.CreateJobResponse = await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(**kw), metadata=who, timeout=TIMEOUT
    )
    return response


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for info in details_of(error, error_details_pb2.RetryInfo):
        return info.retry_delay.ToNanoseconds() / 1e9
    return None


def object_exists(s3: object, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except Exception:
        return False
    return True


def jobs_of(database_url: str, owner: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM jobs WHERE owner = :owner"), {"owner": owner}
                ).scalar_one()
            )
    finally:
        engine.dispose()


async def cancel(jobs: job_service_pb2_grpc.JobServiceStub, who: Metadata, job_id: str) -> None:
    await jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id), metadata=who)


# --- uploads ---------------------------------------------------------------------------------


async def test_an_uploaded_image_reaches_the_worker_without_passing_through_job_service(
    clients, deps
) -> None:
    who = clients.user("uploader")
    data = large_png()
    upload = await new_upload(clients.jobs, who, "image/png", len(data))
    # The URL names the public endpoint and the uploads prefix, never the user; the signature
    # covers the type and size declared.
    assert keys.upload_key(upload.upload_id) in upload.url
    assert "uploader" not in upload.url
    assert "content-length%3Bcontent-type" in upload.url  # X-Amz-SignedHeaders
    assert dict(upload.headers) == {"Content-Type": "image/png"}
    assert upload.expire_time.seconds > 0
    assert await put(upload.url, dict(upload.headers), data) == 200

    made = await create(clients.jobs, who, **with_upload(upload.upload_id, prompt="an edit"))
    assert made.created
    job = made.job
    stored = job.image.input_image
    assert stored.key == keys.input_key(job.id) and stored.bucket == "media"
    assert stored.upload_id == upload.upload_id and stored.mime_type == "image/png"
    assert not stored.data
    s3 = deps.s3_client()
    copy = await asyncio.to_thread(s3.get_object, Bucket="media", Key=stored.key)
    assert copy["Body"].read() == data
    # The upload object is gone once the job has its own copy.
    assert not await asyncio.to_thread(
        object_exists, s3, "media", keys.upload_key(upload.upload_id)
    )

    done = await wait_terminal(clients, who, job.id)
    assert done.status == job_pb2.JOB_STATUS_SUCCEEDED, done.error
    fresh = (
        await clients.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id), metadata=who)
    ).job
    output = Image.open(io.BytesIO(await fetch(fresh.outputs[0].url))).convert("RGB")
    # The local generator draws over its input: the top left is the upload's red, which the
    # same prompt without an input does not give.
    red, green, blue = output.getpixel((2, 2))
    assert red > 150 and red > green + 60 and red > blue + 60, (red, green, blue)
    alone = render_image("an edit", (256, 256), 0).convert("RGB")
    assert alone.getpixel((2, 2)) != output.getpixel((2, 2))


async def test_mediactl_uploads_its_input_image(
    clients, stack, secret, tmp_path, monkeypatch, capsys
) -> None:
    path = tmp_path / "large.png"
    path.write_bytes(large_png())  # too large to go inline
    monkeypatch.setenv("JOB_SERVICE_ADDR", stack.job_service_addr)
    monkeypatch.setenv("MEDIA_TOKEN", mint_token(secret, "mediactl-uploader"))
    argv = ["create", "image", "--prompt", "p", "--size", "256x256", "--input-image", str(path)]
    with workers_paused(stack):
        code = await asyncio.to_thread(mediactl, [*argv, "--json"])
        out = capsys.readouterr()
        assert code == 0, out.err
        job = json_format.Parse(out.out, job_service_pb2.CreateJobResponse()).job
        assert job.image.input_image.upload_id and job.image.input_image.key
        await cancel(clients.jobs, clients.user("mediactl-uploader"), job.id)


async def test_another_users_upload_is_not_theirs_to_use(clients, stack) -> None:
    owner, other = clients.user("upload-owner"), clients.user("upload-thief")
    upload_id = await uploaded(clients.jobs, owner, png(32, 32))
    for who, upload in ((other, upload_id), (owner, "0b8f7c39-5d0c-4a5e-9a53-2a6b5a0c1f00")):
        error = await refused(create(clients.jobs, who, **with_upload(upload)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == [(FIELD, "is not an upload of yours")]
    # The refusals took nothing from the owner.
    with workers_paused(stack):
        made = await create(clients.jobs, owner, **with_upload(upload_id))
        assert made.created
        await cancel(clients.jobs, owner, made.job.id)


async def test_an_upload_serves_one_job_and_a_replay_returns_it(clients, stack) -> None:
    who = clients.user("upload-reuser")
    data = png(48, 48)
    upload_id = await uploaded(clients.jobs, who, data)
    with workers_paused(stack):
        first = await create(clients.jobs, who, **with_upload(upload_id, request_id="once"))
        assert first.created
        # The same request again (a retry after a lost answer) is the first job.
        again = await create(clients.jobs, who, **with_upload(upload_id, request_id="once"))
        assert not again.created and again.job.id == first.job.id
        # So is a retry that uploaded the same image anew, as mediactl does.
        reuploaded = await uploaded(clients.jobs, who, data)
        retry = await create(clients.jobs, who, **with_upload(reuploaded, request_id="once"))
        assert not retry.created and retry.job.id == first.job.id
        # Another create cannot have the used upload.
        for request_id in ("", "another"):
            error = await refused(
                create(clients.jobs, who, **with_upload(upload_id, request_id=request_id))
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            [(field, description)] = field_violations(error)
            assert field == FIELD and "used by another job" in description
        await cancel(clients.jobs, who, first.job.id)


async def test_an_upload_unlike_its_declaration_is_refused_and_can_be_put_again(
    clients, stack, deps
) -> None:
    who = clients.user("upload-liar")
    data = png(40, 40)
    jpeg = png(40, 40, "JPEG")
    cases = [
        # (declared type, PUT's Content-Type, body, what the refusal says)
        ("image/png", None, None, "has no image yet"),  # nothing was PUT
        ("image/png", "image/png", data + b"\0" * 10, f"holds {len(data) + 10} bytes"),
        ("image/png", "image/jpeg", data, "of image/jpeg, not"),
        ("image/jpeg", "image/jpeg", data + b"\0" * (len(jpeg) - len(data)), "is a image/png"),
        ("image/png", "image/png", b"GIF89a" + b"\0" * (len(data) - 6), "not a PNG, JPEG or WEBP"),
    ]
    rows_before = await asyncio.to_thread(jobs_of, deps.database_url, "upload-liar")
    for declared, sent_type, body, says in cases:
        size = len(jpeg) if declared == "image/jpeg" else len(data)
        upload = await new_upload(clients.jobs, who, declared, size)
        if body is not None:
            # moto takes any body (it does not check signatures); S3 itself would refuse these
            # PUTs, so job_service's own checks are what stands here.
            assert sent_type is not None
            await put(upload.url, {"Content-Type": sent_type}, body)
        error = await refused(create(clients.jobs, who, **with_upload(upload.upload_id)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, says
        [(field, description)] = field_violations(error)
        assert field == FIELD and says in description, (says, description)
    assert await asyncio.to_thread(jobs_of, deps.database_url, "upload-liar") == rows_before
    # A refused create did not use the upload up: the right bytes PUT again make a job.
    assert declared == "image/png"
    await put(upload.url, dict(upload.headers), data)
    with workers_paused(stack):
        made = await create(clients.jobs, who, **with_upload(upload.upload_id))
        assert made.created
        await cancel(clients.jobs, who, made.job.id)


async def test_an_uploaded_decompression_bomb_is_refused(clients, deps) -> None:
    who = clients.user("upload-bomber")
    data = bomb()
    upload_id = await uploaded(clients.jobs, who, data)
    error = await refused(create(clients.jobs, who, **with_upload(upload_id)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = field_violations(error)
    assert field == FIELD
    assert "7071x7071" in description and str(MAX_INPUT_PIXELS) in description
    assert await asyncio.to_thread(jobs_of, deps.database_url, "upload-bomber") == 0


async def test_create_input_upload_checks_its_caller_then_its_fields(clients) -> None:
    who = clients.user("upload-asker")
    cases = [
        ("image/gif", 100, ["mime_type"]),
        ("image/png", 0, ["byte_size"]),
        ("image/png", 10 * 2**20 + 1, ["byte_size"]),  # MAX_INPUT_IMAGE_BYTES
        ("", -1, ["mime_type", "byte_size"]),
    ]
    for mime_type, byte_size, bad in cases:
        error = await refused(new_upload(clients.jobs, who, mime_type, byte_size))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(error)] == bad
        # Without a token the fields are never looked at.
        error = await refused(new_upload(clients.jobs, (), mime_type, byte_size))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- inline images and the message limit --------------------------------------------------------


async def test_inline_data_over_the_inline_limit_is_refused_naming_the_field(clients) -> None:
    data = png() + b"\0" * MAX_INLINE_IMAGE_BYTES
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(prompt="big", input_image=job_pb2.InputImage(data=data))
    )
    assert request.ByteSize() < DEFAULT_MAX_MESSAGE_BYTES  # refused by validation, not by gRPC
    error = await refused(clients.jobs.CreateJob(request, metadata=clients.user("inline-big")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = field_violations(error)
    assert field == "image.input_image.data"
    assert f"at most {MAX_INLINE_IMAGE_BYTES} bytes inline" in description
    assert "CreateInputUpload" in description


async def test_an_unauthenticated_message_over_the_limit_is_refused_before_any_handler(
    clients,
) -> None:
    """gRPC reads a whole message before a handler can check its token: the limit is what
    bounds that, and it is small now that large images are uploaded."""
    channel = clients.job_channel
    send = channel.unary_unary(
        "/media.v1.JobService/GetJob", request_serializer=None, response_deserializer=None
    )

    def get_job_of(size: int) -> bytes:  # a GetJobRequest whose job_id makes it `size` bytes
        length = size
        while (
            len(body := job_service_pb2.GetJobRequest(job_id="a" * length).SerializeToString())
            > size
        ):
            length -= 1
        return body

    over = get_job_of(DEFAULT_MAX_MESSAGE_BYTES + 1)
    assert len(over) == DEFAULT_MAX_MESSAGE_BYTES + 1
    error = await refused(send(over, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(DEFAULT_MAX_MESSAGE_BYTES) in (error.details() or "")
    # Just under it, the call reaches the handler, which wants a token first.
    under = get_job_of(DEFAULT_MAX_MESSAGE_BYTES - 1024)
    error = await refused(send(under, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_list_pages_end_early_rather_than_go_over_the_message_limit(clients, stack) -> None:
    """Prompts are limited in characters, not bytes: 100 jobs of two 8000-character prompts of
    4-byte characters would be a 6 MiB page. A page holds what fits instead."""
    who = clients.user("long-prompts")
    prompt = "\U0001f39e" * 8000  # 32 KB of UTF-8
    made: list[str] = []
    with workers_paused(stack):
        for _ in range(40):  # about 2.5 MiB of prompts in all
            job = (
                await create(
                    clients.jobs,
                    who,
                    video=job_pb2.VideoParams(prompt=prompt, negative_prompt=prompt),
                )
            ).job
            made.append(job.id)
            await cancel(clients.jobs, who, job.id)  # the worker skips it
    seen: list[str] = []
    pages = 0
    request = job_service_pb2.ListJobsRequest(page_size=100)
    while True:
        page = await clients.jobs.ListJobs(request, metadata=who, timeout=TIMEOUT)
        assert page.ByteSize() <= DEFAULT_MAX_MESSAGE_BYTES
        seen.extend(job.id for job in page.jobs)
        pages += 1
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert pages > 1
    assert seen == made[::-1]  # every job once, newest first


# --- a stack with a small budget and cap ------------------------------------------------------

BUDGET_BUCKET = "media-input-budget"
IN_FLIGHT_BYTES = 400_000  # MAX_INPUT_BYTES_IN_FLIGHT of that stack: one of the images at a time
CONCURRENT_RPCS = 24  # its MAX_CONCURRENT_RPCS


@dataclass
class Small:
    services: Services
    secret: str
    jobs: job_service_pb2_grpc.JobServiceStub
    channel: grpc.aio.Channel

    def user(self, subject: str) -> Metadata:
        return bearer_metadata(mint_token(self.secret, subject))


@pytest_asyncio.fixture(scope="module")
async def small(
    deps: Dependencies, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Small]:
    root: Path = tmp_path_factory.mktemp("small-budget-stack")
    (root / "logs").mkdir()
    nats = NatsServer(root / "nats", root / "logs")
    services = None
    secret = "jwt-secret-" + os.urandom(24).hex()
    try:
        own, env = await own_dependencies(deps, nats, "budget")
        env |= {
            "S3_BUCKET": BUDGET_BUCKET,
            "MAX_INPUT_BYTES_IN_FLIGHT": str(IN_FLIGHT_BYTES),
            "MAX_INLINE_IMAGE_BYTES": str(IN_FLIGHT_BYTES),  # at most the budget
            "MAX_CONCURRENT_RPCS": str(CONCURRENT_RPCS),
            # One user sends everything: the per-user limits would answer first.
            "RATE_LIMIT_PER_MINUTE": "0",
            "MAX_ACTIVE_JOBS_PER_USER": "0",
        }
        services = await asyncio.to_thread(
            start_services, root / "run", own, secret, workers=0, extra_env=env
        )
        channel = grpc.aio.insecure_channel(services.job_service_addr)
        try:
            yield Small(services, secret, job_service_pb2_grpc.JobServiceStub(channel), channel)
        finally:
            await channel.close()
    finally:
        if services is not None:
            await asyncio.to_thread(services.stop, 10)
        await asyncio.to_thread(nats.stop)


def noise_png(target_bytes: int) -> bytes:
    side = int((target_bytes / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


async def test_creates_over_the_bytes_in_flight_budget_are_told_to_retry(small: Small) -> None:
    who = small.user("budget-user")
    data = noise_png(300_000)  # more than half the budget: two cannot be held at once
    assert IN_FLIGHT_BYTES / 2 < len(data) < IN_FLIGHT_BYTES
    request = job_service_pb2.CreateJobRequest(
        image=job_pb2.ImageParams(
            prompt="parallel", size="256x256", input_image=job_pb2.InputImage(data=data)
        )
    )
    results = await asyncio.gather(
        *(small.jobs.CreateJob(request, metadata=who, timeout=TIMEOUT) for _ in range(12)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, job_service_pb2.CreateJobResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) + len(errors) == len(results), results
    assert created and errors, [getattr(r, "code", lambda: "OK")() for r in results]
    for error in errors:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "MAX_INPUT_BYTES_IN_FLIGHT" in (error.details() or "")
        delay = retry_delay(error)
        assert delay is not None and 0 < delay <= 2
    # The process is up, and the budget was all given back: a create on its own goes through,
    # and so does one that waited as it was told.
    assert small.services.job_service.running
    assert await asyncio.to_thread(health_serving, small.services.job_service_addr, 10)
    again = await small.jobs.CreateJob(request, metadata=who, timeout=TIMEOUT)
    assert again.created


async def _half_open(channel: grpc.aio.Channel, release: asyncio.Event) -> grpc.aio.StreamUnaryCall:
    """A call whose request never comes (until `release`): what a slow or hostile client holds
    open without ever showing a token."""

    async def nothing() -> AsyncIterable[bytes]:
        await release.wait()
        return
        yield b""  # an async generator that sends nothing

    method = channel.stream_unary(
        "/media.v1.JobService/GetJob", request_serializer=None, response_deserializer=None
    )
    return method(nothing(), timeout=TIMEOUT)  # type: ignore[arg-type]


async def test_calls_beyond_the_concurrency_cap_are_refused_before_their_message(
    small: Small,
) -> None:
    release = asyncio.Event()
    extra = 4
    # More calls than the cap, none of which ever sends its message (nor a token): the server
    # takes CONCURRENT_RPCS of them and waits on those; the others are refused at once.
    held = [await _half_open(small.channel, release) for _ in range(CONCURRENT_RPCS + extra)]
    try:
        for _ in range(100):
            refused_calls = [call for call in held if call.done()]
            if len(refused_calls) >= extra:
                break
            await asyncio.sleep(0.05)
        assert len(refused_calls) == extra, len(refused_calls)
        for call in refused_calls:
            assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # While they hold every slot, any other call is refused, a real user's too.
        for _ in range(3):
            error = await refused(
                small.jobs.ListJobs(
                    job_service_pb2.ListJobsRequest(), metadata=small.user("capped"), timeout=5
                )
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in held:
            call.cancel()
        release.set()
    # Once they are gone, calls are served again.
    for _ in range(50):
        try:
            await small.jobs.ListJobs(
                job_service_pb2.ListJobsRequest(), metadata=small.user("capped"), timeout=5
            )
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the server kept refusing after the held calls ended")
    assert small.services.job_service.running
