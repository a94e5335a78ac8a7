"""Jobs through the running services with the Google generator: the worker runs the real
google-genai SDK against the wire-level fake of Google's API (tests/fakes/gemini_fake.py).

The stack is a second one with its own dependencies (see google_stack.py); its worker uses Vertex
AI express mode so Gemini, Imagen and Veo are all served. Each test checks what a user sees: the
status, the error, the outputs and the bytes behind their URLs. Delays are short but no assertion
depends on timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import grpc
import pytest
import pytest_asyncio
from PIL import Image

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2
from tests.conftest import Clients, workers_paused
from tests.e2e.google_stack import GoogleStack, google_worker_env, start_google_stack
from tests.e2e.helpers import WAIT_SECONDS, as_file, create, fetch, wait_terminal
from tests.fakes.gemini_fake import FakeGemini

pytestmark = pytest.mark.e2e

ErrorCode = job_pb2.ErrorCode
SUCCEEDED = job_pb2.JOB_STATUS_SUCCEEDED
FAILED = job_pb2.JOB_STATUS_FAILED
# A key that cannot appear anywhere by chance, and not shaped like a Google key either, so only
# the generator's own scrubbing of its configured key can hide it.
API_KEY = f"fake-key-{secrets.token_hex(12)}"
MAX_ATTEMPTS = 2
GOOGLE_RETRY_ATTEMPTS = 3
# The never-finishing operation waits this long; a video that does finish needs about 1-2 s.
VIDEO_DEADLINE_SECONDS = 10
VEO = "veo-3.1-generate-preview"
IMAGEN = "imagen-4.0-generate-001"
GEMINI = "gemini-2.5-flash-image"  # the worker's default image model


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    # In this process: the worker reaches it over HTTP, and the tests read what it served.
    with FakeGemini(api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def google_stack(
    fake: FakeGemini, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GoogleStack]:
    worker_env = google_worker_env(
        fake.url,
        API_KEY,
        GOOGLE_API_RETRY_ATTEMPTS=str(GOOGLE_RETRY_ATTEMPTS),
        VIDEO_DEADLINE_SECONDS=str(VIDEO_DEADLINE_SECONDS),
        # The most verbose the worker gets: a key leaking into debug lines must show up too.
        LOG_LEVEL="DEBUG",
    )
    run_dir: Path = tmp_path_factory.mktemp("google-stack")
    started = start_google_stack(run_dir, worker_env, job_env={"MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture(scope="module")
async def gclients(google_stack: GoogleStack) -> AsyncIterator[Clients]:
    made = Clients(google_stack.services, google_stack.secret)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(autouse=True)
def fresh_script(fake: FakeGemini) -> None:
    # Every job of an earlier test has ended (each test waits for it), so nothing in flight can
    # consume this test's script.
    fake.reset()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def run_image(clients: Clients, **params: object) -> job_pb2.Job:
    job = await create(
        clients, clients.alice, image=job_pb2.ImageParams(prompt="a lighthouse at dusk", **params)
    )
    return await wait_terminal(clients, clients.alice, job.id)


async def create_and_watch(
    clients: Clients, stack: GoogleStack, **params: object
) -> list[job_pb2.Job]:
    """Creates a job and returns every state a watcher saw, from the very first: the worker is
    frozen until the watch has begun, so no change can slip by before the watcher listens."""
    with workers_paused(stack.services):
        job = await create(clients, clients.alice, **params)
        call = clients.notifier.WatchJob(
            notifier_service_pb2.WatchJobRequest(job_id=job.id), metadata=clients.alice
        )
        first = await asyncio.wait_for(call.read(), WAIT_SECONDS)
    assert first is not grpc.aio.EOF
    seen = [first.job]
    assert seen[0].status == job_pb2.JOB_STATUS_QUEUED and seen[0].attempt == 0

    async def rest() -> None:
        while (message := await call.read()) is not grpc.aio.EOF:
            seen.append(message.job)

    await asyncio.wait_for(rest(), WAIT_SECONDS)
    return seen


async def check_image_outputs(
    job: job_pb2.Job, pil_format: str, size: tuple[int, int], count: int
) -> list[bytes]:
    """The outputs as a user downloads them: each decodes as the asked format and size."""
    assert len(job.outputs) == count
    blobs = []
    for index, output in enumerate(job.outputs):
        data = await fetch(output.url)
        assert sha256(data) == output.sha256 and len(data) == output.byte_size
        image = Image.open(as_file(data))
        assert image.format == pil_format
        assert image.size == size == (output.width, output.height)
        assert output.content_type == Image.MIME[pil_format]
        assert output.index == index
        assert output.key.startswith(f"jobs/{job.id}/{job.attempt}/output-{index}.")
        blobs.append(data)
    return blobs


async def test_gemini_image_passes_the_models_bytes_through(gclients, fake) -> None:
    # PNG at the size Gemini renders for 1:1: nothing to convert, the fake's bytes are stored.
    done = await run_image(gclients, size="1024x1024", format=job_pb2.IMAGE_FORMAT_PNG)
    assert done.status == SUCCEEDED, done.error
    [data] = await check_image_outputs(done, "PNG", (1024, 1024), 1)
    assert [sha256(data)] == [sha256(served) for served in fake.served_images]
    assert done.attempt == 1 and done.model == GEMINI
    assert done.status_message == "succeeded"  # nothing adapted, nothing to say
    assert done.generation_time.ToNanoseconds() > 0
    [call] = fake.calls("generateContent")
    assert call.backend == "vertex" and call.model == GEMINI
    assert call.body["generationConfig"]["imageConfig"]["aspectRatio"] == "1:1"


async def test_gemini_images_are_converted_to_the_requested_format(gclients, fake) -> None:
    # 1344x768 is what Gemini renders for 16:9, so only the encoding changes (PNG -> JPEG).
    done = await run_image(
        gclients, size="1344x768", format=job_pb2.IMAGE_FORMAT_JPEG, number_of_images=2
    )
    assert done.status == SUCCEEDED, done.error
    blobs = await check_image_outputs(done, "JPEG", (1344, 768), 2)
    assert len(fake.served_images) == 2  # one generateContent call per image
    assert {sha256(b) for b in blobs}.isdisjoint(sha256(s) for s in fake.served_images)
    assert done.status_message == "succeeded"


async def test_gemini_image_resized_to_the_requested_size_says_so(gclients, fake) -> None:
    # Gemini renders 1:1 at 1024x1024 only; 512x512 is a resize, which the user is told about.
    done = await run_image(gclients, size="512x512", format=job_pb2.IMAGE_FORMAT_WEBP)
    assert done.status == SUCCEEDED, done.error
    await check_image_outputs(done, "WEBP", (512, 512), 1)
    assert "1024x1024" in done.status_message and "resized to 512x512" in done.status_message
    [served] = fake.served_images
    assert Image.open(as_file(served)).size == (1024, 1024)


async def test_imagen_image_job_succeeds(gclients, fake) -> None:
    done = await run_image(
        gclients,
        model=IMAGEN,
        size="1024x1024",
        format=job_pb2.IMAGE_FORMAT_PNG,
        number_of_images=2,
    )
    assert done.status == SUCCEEDED, done.error
    blobs = await check_image_outputs(done, "PNG", (1024, 1024), 2)
    # Both images come from one predict call and are stored as served.
    assert sorted(map(sha256, blobs)) == sorted(map(sha256, fake.served_images))
    assert done.model == IMAGEN and done.attempt == 1
    [call] = fake.calls("predict")
    assert call.backend == "vertex" and call.model == IMAGEN
    assert call.body["parameters"]["sampleCount"] == 2


async def test_veo_video_job_succeeds_with_progress_while_polling(
    gclients, fake, google_stack
) -> None:
    # Several polls before the operation is done, so the watcher sees the waiting reported.
    fake.operation_polls = 8
    events = await create_and_watch(
        gclients,
        google_stack,
        video=job_pb2.VideoParams(
            prompt="waves on a beach",
            model=VEO,
            aspect_ratio=job_pb2.ASPECT_RATIO_9_16,
            duration_seconds=6,
        ),
    )
    done = events[-1]
    assert done.status == SUCCEEDED, done.error
    polling = [
        e
        for e in events
        if e.status == job_pb2.JOB_STATUS_RUNNING
        and e.status_message.startswith(f"generating with {VEO}")
    ]
    assert polling, [e.status_message for e in events]
    assert all(0 < e.progress < 100 for e in polling)
    assert [e.version for e in events] == sorted(e.version for e in events)
    assert len(fake.calls("poll")) >= 8

    [output] = done.outputs
    data = await fetch(output.url)
    assert [sha256(data)] == [sha256(v) for v in fake.served_videos] == [output.sha256]
    assert output.content_type == "video/mp4" and output.key.startswith(f"jobs/{done.id}/1/")
    with av.open(as_file(data)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = float(container.duration or 0) / av.time_base
    assert (width, height) == (output.width, output.height) and width < height  # 9:16
    assert duration == pytest.approx(6, abs=0.25)
    assert output.duration_seconds == pytest.approx(6, abs=0.25)
    assert done.model == VEO and done.attempt == 1
    [submit] = fake.calls("predictLongRunning")
    assert submit.backend == "vertex"
    assert submit.body["parameters"]["aspectRatio"] == "9:16"
    assert submit.body["parameters"]["durationSeconds"] == 6


@pytest.mark.parametrize(
    ("model", "method", "script", "reason"),
    [
        (GEMINI, "generateContent", "block_prompt", "blocked the prompt (SAFETY)"),
        (GEMINI, "generateContent", "block_output", "withheld the image (IMAGE_SAFETY)"),
        (IMAGEN, "predict", "block_prompt", "Responsible AI practices"),
    ],
)
async def test_safety_block_fails_at_once_with_the_models_reason(
    gclients, fake, model, method, script, reason
) -> None:
    getattr(fake, script)(method, times=None)  # were it retried, it would be blocked again
    done = await run_image(gclients, model=model, size="1024x1024")
    assert done.status == FAILED
    assert done.error.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED, done.error
    assert reason in done.error.message and model in done.error.message
    assert done.attempt == 1 and not done.outputs
    assert len(fake.calls(method)) == 1  # neither retried by the generator nor redelivered


async def test_rate_limit_storm_exhausts_every_attempt_and_names_the_cause(
    gclients, fake, google_stack
) -> None:
    fake.fail("generateContent", 429, times=None)
    events = await create_and_watch(
        gclients, google_stack, image=job_pb2.ImageParams(prompt="a storm", size="1024x1024")
    )
    done = events[-1]
    assert done.status == FAILED
    assert done.error.code == ErrorCode.ERROR_CODE_ATTEMPTS_EXHAUSTED, done.error
    assert f"attempts exhausted after {MAX_ATTEMPTS}" in done.error.message
    assert "429" in done.error.message and "exhausted" in done.error.message.lower()
    assert done.attempt == MAX_ATTEMPTS
    # Between the attempts the job went back to the queue, saying why.
    requeued = [e for e in events if e.status == job_pb2.JOB_STATUS_QUEUED and e.attempt == 1]
    assert requeued and "429" in requeued[0].status_message
    assert requeued[0].error.code == ErrorCode.ERROR_CODE_RATE_LIMITED
    # Each attempt retried the call itself before giving the job back.
    assert len(fake.calls("generateContent")) == MAX_ATTEMPTS * GOOGLE_RETRY_ATTEMPTS


async def test_server_error_then_success_is_retried_within_the_attempt(gclients, fake) -> None:
    fake.fail("generateContent", 500, times=1)
    done = await run_image(gclients, size="1024x1024")
    assert done.status == SUCCEEDED, done.error
    assert done.attempt == 1
    assert [c.status for c in fake.calls("generateContent")] == [500, 200]
    [data] = await check_image_outputs(done, "PNG", (1024, 1024), 1)
    assert [sha256(data)] == [sha256(s) for s in fake.served_images]


async def test_video_operation_that_never_finishes_fails_with_deadline(gclients, fake) -> None:
    fake.never_finish = True
    job = await create(
        gclients,
        gclients.alice,
        video=job_pb2.VideoParams(prompt="an endless take", model=VEO, duration_seconds=4),
    )
    done = await wait_terminal(gclients, gclients.alice, job.id)
    assert done.status == FAILED
    assert done.error.code == ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED, done.error
    assert f"VIDEO_DEADLINE_SECONDS={VIDEO_DEADLINE_SECONDS}" in done.error.message
    assert "operations/" in done.error.message  # names the operation, for the operator
    assert done.attempt == 1 and not done.outputs
    assert len(fake.calls("predictLongRunning")) == 1 and fake.calls("poll")


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("not_json", "malformed response"),
        ("no_media", "returned no image"),
        ("bad_image", "not a readable image"),
    ],
)
async def test_malformed_response_fails_with_no_media(gclients, fake, kind, says) -> None:
    fake.malformed("generateContent", kind=kind, times=None)
    done = await run_image(gclients, size="1024x1024")
    assert done.status == FAILED
    assert done.error.code == ErrorCode.ERROR_CODE_NO_MEDIA, done.error
    assert says in done.error.message and GEMINI in done.error.message
    assert done.attempt == 1 and not done.outputs
    assert len(fake.calls("generateContent")) == 1


async def test_api_key_never_reaches_job_data_or_logs(gclients, fake, google_stack) -> None:
    # The API echoes the key back: in a retried 503 (logged as a warning) and in the final 400
    # (the job's error message).
    fake.fail("generateContent", 503, times=1, message=f"backend saw key {API_KEY}")
    fake.fail("generateContent", 400, times=1, message=f"bad request with ?key={API_KEY}")
    done = await run_image(gclients, size="1024x1024")
    assert done.status == FAILED
    assert done.error.code == ErrorCode.ERROR_CODE_INVALID_REQUEST, done.error
    assert "[redacted]" in done.error.message
    # The key really was in use (as a header, never in the URL).
    calls = fake.calls("generateContent")
    assert [c.status for c in calls] == [503, 400]
    assert all(c.headers["x-goog-api-key"] == API_KEY for c in calls)
    assert not any(API_KEY in c.path or API_KEY in str(c.query) for c in calls)

    # Every job this module ran, as its owner reads them.
    listed = await gclients.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(page_size=100), metadata=gclients.alice
    )
    assert len(listed.jobs) > 1
    for job in listed.jobs:
        assert API_KEY not in str(job), job.id
    # Every log line of every service and dependency, including the worker's debug lines.
    logs = google_stack.log_files()
    assert any(path.name.startswith("media_worker") for path in logs)
    for path in logs:
        assert API_KEY not in path.read_text(errors="replace"), path.name
