"""The Google generator end to end: the real google-genai SDK against the local fake over HTTP.

Every backend form is exercised: the Gemini Developer API (API key), Vertex AI in express mode
(API key) and Vertex AI with project and location (static bearer credentials stand in for ADC).
Retry and poll delays are tiny; no assertion depends on timing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import pytest
from google.oauth2.credentials import Credentials
from PIL import Image

from media.v1 import events_pb2, job_pb2
from services.media_worker.generators.base import (
    GenerationContext,
    GenerationError,
    GenerationResult,
)
from services.media_worker.generators.google import GoogleGenerator, build_generator
from services.media_worker.generators.google_settings import GoogleSettings
from services.media_worker.settings import WorkerSettings
from tests.fakes.gemini_fake import FakeGemini

ErrorCode = job_pb2.ErrorCode


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    # One server per test: a request a previous test abandoned cannot consume this test's script.
    with FakeGemini() as server:
        yield server


def settings_for(fake: FakeGemini, backend: str, **overrides: object) -> GoogleSettings:
    base = GoogleSettings(
        api_key="" if backend == "vertex" else fake.api_key,
        default_image_model="gemini-2.5-flash-image",
        default_video_model="veo-3.1-generate-preview",
        use_vertexai=backend in ("vertex", "express"),
        project="proj" if backend == "vertex" else "",
        location="us-central1" if backend == "vertex" else "",
        gemini_base_url=fake.url,
        vertex_base_url=fake.url,
        retry_attempts=3,
        retry_base_delay_seconds=0.001,
        retry_max_delay_seconds=0.01,
        video_deadline_seconds=30.0,
        video_poll_initial_seconds=0.001,
        video_poll_max_seconds=0.005,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def generator_for(fake: FakeGemini, backend: str, **overrides: object) -> GoogleGenerator:
    credentials = Credentials(token=fake.access_token) if backend == "vertex" else None
    return build_generator(settings_for(fake, backend, **overrides), credentials=credentials)


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[int, str]] = []
        self.keep_alives = 0

    async def on_progress(self, percent: int, message: str) -> None:
        self.progress.append((percent, message))

    async def keep_alive(self) -> None:
        self.keep_alives += 1


def context(
    tmp_path: Path,
    *,
    image: job_pb2.ImageParams | None = None,
    video: job_pb2.VideoParams | None = None,
    input_image: bytes | None = None,
) -> tuple[GenerationContext, Recorder]:
    if image is not None:
        dispatch = events_pb2.JobDispatch(
            job_id="job-1", kind=job_pb2.MEDIA_KIND_IMAGE, image=image
        )
    else:
        dispatch = events_pb2.JobDispatch(
            job_id="job-1", kind=job_pb2.MEDIA_KIND_VIDEO, video=video
        )
    recorder = Recorder()
    ctx = GenerationContext(
        dispatch=dispatch,
        workdir=tmp_path,
        progress=recorder.on_progress,
        keep_alive=recorder.keep_alive,
        input_image=input_image,
        input_mime_type="image/png" if input_image else "",
    )
    return ctx, recorder


async def run(generator: GoogleGenerator, ctx: GenerationContext) -> GenerationResult:
    try:
        return await generator.generate(ctx)
    finally:
        await generator.aclose()


async def failure(generator: GoogleGenerator, ctx: GenerationContext) -> GenerationError:
    with pytest.raises(GenerationError) as caught:
        await run(generator, ctx)
    return caught.value


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def probe_video(path: Path) -> tuple[int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return stream.width, stream.height, container.duration / av.time_base


# -- images ------------------------------------------------------------------------------------


async def test_gemini_image_developer_api_keeps_the_models_bytes(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(
        prompt="a red fox", size="1024x1024", style=job_pb2.IMAGE_STYLE_ANIME
    )
    ctx, recorder = context(tmp_path, image=params)
    result = await run(generator_for(fake, "developer"), ctx)

    assert result.model == "gemini-2.5-flash-image" and result.notes == []
    assert [f.content_type for f in result.files] == ["image/png"]
    assert result.files[0].path.read_bytes() == fake.served_images[0]
    (call,) = fake.calls("generateContent")
    assert call.backend == "developer"
    assert call.path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert call.headers["x-goog-api-key"] == fake.api_key and "key" not in call.query
    config = call.body["generationConfig"]
    assert config["responseModalities"] == ["IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "1:1"}
    prompt = call.body["contents"][0]["parts"][-1]["text"]
    assert prompt.startswith("a red fox") and "anime" in prompt
    assert recorder.progress[0][0] == 5 and recorder.progress[-1][0] == 95


async def test_gemini_images_resized_and_converted(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(
        prompt="a boat", size="256x256", number_of_images=3, format=job_pb2.IMAGE_FORMAT_JPEG
    )
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "express"), ctx)

    assert len(result.files) == 3 and len(fake.calls("generateContent")) == 3
    for generated in result.files:
        assert generated.content_type == "image/jpeg" and generated.path.suffix == ".jpg"
        with Image.open(generated.path) as image:
            assert (image.format, image.size) == ("JPEG", (256, 256))
    assert result.notes == [
        "gemini-2.5-flash-image renders 256x256 as 1:1 at 1024x1024; resized to 256x256"
    ]
    assert all(c.path.startswith("/v1beta1/publishers/google/models/") for c in fake.requests)


async def test_gemini_image_on_vertex_with_project(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(prompt="dunes", size="1344x768", format=job_pb2.IMAGE_FORMAT_WEBP)
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "vertex"), ctx)

    with Image.open(result.files[0].path) as image:
        assert (image.format, image.size) == ("WEBP", (1344, 768))
    assert result.files[0].content_type == "image/webp" and result.notes == []
    (call,) = fake.calls("generateContent")
    assert call.path == (
        "/v1beta1/projects/proj/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash-image:generateContent"
    )
    assert call.headers["authorization"] == f"Bearer {fake.access_token}"
    assert "x-goog-api-key" not in call.headers
    assert call.body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}


async def test_gemini_3_high_quality_asks_for_2k(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(
        prompt="x",
        size="1344x768",
        model="gemini-3-pro-image-preview",
        quality=job_pb2.IMAGE_QUALITY_HIGH,
    )
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "developer"), ctx)

    (call,) = fake.calls("generateContent")
    assert call.body["generationConfig"]["imageConfig"] == {
        "aspectRatio": "16:9",
        "imageSize": "2K",
    }
    with Image.open(result.files[0].path) as image:
        assert image.size == (1344, 768)
    assert result.notes and "2752x1536" in result.notes[0]


@pytest.mark.parametrize("backend", ["developer", "express"])
async def test_gemini_edit_sends_the_input_image(fake: FakeGemini, tmp_path: Path, backend: str):
    source = png_bytes()
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="make it blue"), input_image=source)
    result = await run(generator_for(fake, backend), ctx)

    (call,) = fake.calls("generateContent")
    assert call.inline_images == [source]
    parts = call.body["contents"][0]["parts"]
    assert parts[-1]["text"] == "make it blue"
    assert result.files[0].path.read_bytes() == fake.served_images[0]


async def test_imagen_on_vertex(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(
        prompt="a castle",
        size="1024x1024",
        number_of_images=2,
        format=job_pb2.IMAGE_FORMAT_JPEG,
        model="imagen-4.0-generate-001",
    )
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "express"), ctx)

    assert [f.path.read_bytes() for f in result.files] == fake.served_images
    assert [f.content_type for f in result.files] == ["image/jpeg", "image/jpeg"]
    (call,) = fake.calls("predict")
    assert call.path == "/v1beta1/publishers/google/models/imagen-4.0-generate-001:predict"
    assert call.body["instances"] == [{"prompt": "a castle"}]
    parameters = call.body["parameters"]
    assert parameters["sampleCount"] == 2 and parameters["aspectRatio"] == "1:1"
    assert parameters["outputOptions"]["mimeType"] == "image/jpeg"
    assert parameters["includeRaiReason"] is True and "sampleImageSize" not in parameters


async def test_imagen_webp_high_quality_is_resized(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(
        prompt="x",
        size="1536x672",
        format=job_pb2.IMAGE_FORMAT_WEBP,
        quality=job_pb2.IMAGE_QUALITY_HIGH,
        model="imagen-4.0-generate-001",
    )
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "vertex"), ctx)

    parameters = fake.calls("predict")[0].body["parameters"]
    assert parameters["sampleImageSize"] == "2K" and parameters["aspectRatio"] == "16:9"
    assert parameters["outputOptions"]["mimeType"] == "image/png"  # WEBP is converted here
    with Image.open(result.files[0].path) as image:
        assert (image.format, image.size) == ("WEBP", (1536, 672))
    assert "center-cropped" in result.notes[0]


@pytest.mark.parametrize(
    ("kind", "model"),
    [("image", "imagen-4.0-generate-001"), ("video", "veo-3.1-generate-preview")],
)
async def test_imagen_and_veo_need_vertex(fake: FakeGemini, tmp_path: Path, kind: str, model: str):
    if kind == "image":
        ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x", model=model))
    else:
        ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x", model=model))
    error = await failure(generator_for(fake, "developer"), ctx)

    assert error.code == ErrorCode.ERROR_CODE_CONFIGURATION and not error.retryable
    assert "GOOGLE_GENAI_USE_VERTEXAI" in error.message and model in error.message
    assert fake.requests == []


async def test_imagen_cannot_edit(fake: FakeGemini, tmp_path: Path):
    params = job_pb2.ImageParams(prompt="x", model="imagen-4.0-generate-001")
    ctx, _ = context(tmp_path, image=params, input_image=png_bytes())
    error = await failure(generator_for(fake, "express"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_INVALID_REQUEST and fake.requests == []


# -- videos ------------------------------------------------------------------------------------


async def test_veo_on_vertex_polls_and_saves_inline_videos(fake: FakeGemini, tmp_path: Path):
    fake.operation_polls = 3
    params = job_pb2.VideoParams(
        prompt="waves at dusk",
        negative_prompt="people",
        aspect_ratio=job_pb2.ASPECT_RATIO_9_16,
        duration_seconds=6,
        number_of_videos=2,
        person_generation=job_pb2.PERSON_GENERATION_ALLOW_ADULT,
    )
    ctx, recorder = context(tmp_path, video=params)
    result = await run(generator_for(fake, "vertex"), ctx)

    assert result.model == "veo-3.1-generate-preview" and result.notes == []
    assert [f.path.read_bytes() for f in result.files] == fake.served_videos
    for generated in result.files:
        assert generated.content_type == "video/mp4"
        assert probe_video(generated.path) == (144, 256, 6.0)
    (submit,) = fake.calls("predictLongRunning")
    assert submit.path.startswith("/v1beta1/projects/proj/locations/us-central1/publishers/")
    assert submit.body["instances"] == [{"prompt": "waves at dusk"}]
    assert submit.body["parameters"] == {
        "sampleCount": 2,
        "durationSeconds": 6,
        "aspectRatio": "9:16",
        "personGeneration": "allow_adult",
        "negativePrompt": "people",
        "generateAudio": True,
    }
    polls = fake.calls("poll")
    assert len(polls) == 3
    assert all(p.path.endswith("veo-3.1-generate-preview:fetchPredictOperation") for p in polls)
    assert {p.body["operationName"] for p in polls} == {
        "projects/proj/locations/us-central1/publishers/google/models/"
        f"veo-3.1-generate-preview/operations/{polls[0].body['operationName'].rsplit('/', 1)[1]}"
    }
    percents = [percent for percent, _ in recorder.progress]
    assert percents == sorted(percents) and percents[-1] == 98
    assert recorder.keep_alives >= 3  # at least once per poll


async def test_veo_express_image_to_video(fake: FakeGemini, tmp_path: Path):
    source = png_bytes()
    params = job_pb2.VideoParams(prompt="animate", duration_seconds=5)
    ctx, _ = context(tmp_path, video=params, input_image=source)
    result = await run(generator_for(fake, "express"), ctx)

    (submit,) = fake.calls("predictLongRunning")
    assert submit.path == (
        "/v1beta1/publishers/google/models/veo-3.1-generate-preview:predictLongRunning"
    )
    assert submit.inline_images == [source]
    assert submit.body["instances"][0]["image"]["mimeType"] == "image/png"
    assert submit.body["parameters"]["durationSeconds"] == 6
    assert result.notes == [
        "veo-3.1-generate-preview makes videos of 4, 6, 8 seconds; made 6 s instead of 5 s"
    ]
    assert probe_video(result.files[0].path) == (256, 144, 6.0)


async def test_veo_output_in_cloud_storage_is_downloaded(fake: FakeGemini, tmp_path: Path):
    generator = generator_for(
        fake,
        "vertex",
        video_output_gcs_uri="gs://media-out/veo",
        storage_endpoint_url=fake.url,
    )
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x", number_of_videos=2))
    result = await run(generator, ctx)

    submit = fake.calls("predictLongRunning")[0]
    assert submit.body["parameters"]["storageUri"] == "gs://media-out/veo/job-1/"
    downloads = fake.calls("download")
    assert len(downloads) == 2 and all(d.backend == "gcs" for d in downloads)
    assert downloads[0].path.startswith("/download/storage/v1/b/media-out/o/veo%2Fjob-1%2F")
    assert all(d.headers["authorization"] == f"Bearer {fake.access_token}" for d in downloads)
    assert [f.path.read_bytes() for f in result.files] == fake.served_videos


async def test_veo_operation_that_never_finishes(fake: FakeGemini, tmp_path: Path):
    fake.never_finish = True
    generator = generator_for(fake, "express", video_deadline_seconds=0.2)
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x"))
    error = await failure(generator, ctx)

    assert error.code == ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED and not error.retryable
    assert "VIDEO_DEADLINE_SECONDS=0.2" in error.message and "operations/" in error.message
    assert len(fake.calls("poll")) >= 1


async def test_veo_poll_500_then_success(fake: FakeGemini, tmp_path: Path):
    fake.fail("poll", 500, times=1)
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x"))
    result = await run(generator_for(fake, "express"), ctx)
    assert len(result.files) == 1
    assert [p.status for p in fake.calls("poll")] == [500, 200]


@pytest.mark.parametrize("what", ["block_prompt", "block_output"])
async def test_veo_safety_block(fake: FakeGemini, tmp_path: Path, what: str):
    getattr(fake, what)("predictLongRunning")
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x"))
    error = await failure(generator_for(fake, "vertex"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED and not error.retryable
    expected = "usage guidelines" if what == "block_prompt" else "violates policies"
    assert expected in error.message
    assert len(fake.calls("predictLongRunning")) == 1


async def test_veo_without_videos_is_no_media(fake: FakeGemini, tmp_path: Path):
    fake.malformed("predictLongRunning", kind="no_media")
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x"))
    error = await failure(generator_for(fake, "express"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_NO_MEDIA and not error.retryable


# -- failures ----------------------------------------------------------------------------------


async def test_gemini_prompt_blocked(fake: FakeGemini, tmp_path: Path):
    fake.block_prompt("generateContent", reason="PROHIBITED_CONTENT")
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED and not error.retryable
    assert "PROHIBITED_CONTENT" in error.message and "blocked the prompt" in error.message
    assert len(fake.calls("generateContent")) == 1  # never retried


async def test_gemini_output_blocked(fake: FakeGemini, tmp_path: Path):
    fake.block_output("generateContent", reason="IMAGE_SAFETY")
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "vertex"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED
    assert "IMAGE_SAFETY" in error.message and "filtered" in error.message


async def test_some_images_blocked_still_succeeds_with_a_note(fake: FakeGemini, tmp_path: Path):
    fake.block_output("generateContent", reason="IMAGE_SAFETY", times=1)
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x", number_of_images=2))
    result = await run(generator_for(fake, "developer"), ctx)
    assert len(result.files) == 1
    assert "returned 1 of 2 images" in result.notes[0] and "IMAGE_SAFETY" in result.notes[0]


@pytest.mark.parametrize("what", ["block_prompt", "block_output"])
async def test_imagen_safety_block(fake: FakeGemini, tmp_path: Path, what: str):
    getattr(fake, what)("predict")
    params = job_pb2.ImageParams(prompt="x", model="imagen-4.0-generate-001")
    ctx, _ = context(tmp_path, image=params)
    error = await failure(generator_for(fake, "express"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED and not error.retryable
    assert ("Responsible AI" if what == "block_prompt" else "safety filter") in error.message


async def test_rate_limit_storm_gives_up_retryable(fake: FakeGemini, tmp_path: Path):
    fake.fail("generateContent", 429, times=None)
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer", retry_attempts=3), ctx)
    assert error.code == ErrorCode.ERROR_CODE_RATE_LIMITED and error.retryable
    assert "429" in error.message and "exhausted" in error.message
    assert len(fake.calls("generateContent")) == 3


async def test_rate_limited_then_success(fake: FakeGemini, tmp_path: Path):
    fake.fail("generateContent", 429, times=2)
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    result = await run(generator_for(fake, "developer", retry_attempts=3), ctx)
    assert result.files[0].path.read_bytes() == fake.served_images[0]
    assert [c.status for c in fake.calls("generateContent")] == [429, 429, 200]


async def test_server_error_then_success(fake: FakeGemini, tmp_path: Path):
    fake.fail("predict", 500, times=1)
    params = job_pb2.ImageParams(prompt="x", model="imagen-4.0-generate-001")
    ctx, _ = context(tmp_path, image=params)
    result = await run(generator_for(fake, "express"), ctx)
    assert len(result.files) == 1
    assert [c.status for c in fake.calls("predict")] == [500, 200]


async def test_server_errors_persist_retryable(fake: FakeGemini, tmp_path: Path):
    fake.fail("predictLongRunning", 503, times=None)
    ctx, _ = context(tmp_path, video=job_pb2.VideoParams(prompt="x"))
    error = await failure(generator_for(fake, "express", retry_attempts=2), ctx)
    assert error.code == ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE and error.retryable
    assert "overloaded" in error.message


async def test_timeouts_are_retried_then_retryable(fake: FakeGemini, tmp_path: Path):
    fake.delay_seconds = 1.0
    generator = generator_for(fake, "developer", request_timeout_seconds=0.05, retry_attempts=2)
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator, ctx)
    assert error.code == ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE and error.retryable
    assert "Timeout" in error.message


async def test_bad_request_fails_at_once(fake: FakeGemini, tmp_path: Path):
    fake.fail("generateContent", 400, message="Unsupported MIME type: image/gif")
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_INVALID_REQUEST and not error.retryable
    assert "Unsupported MIME type: image/gif" in error.message
    assert len(fake.calls("generateContent")) == 1


@pytest.mark.parametrize("kind", ["not_json", "no_media", "bad_image"])
async def test_malformed_responses_are_no_media(fake: FakeGemini, tmp_path: Path, kind: str):
    fake.malformed("generateContent", kind=kind)
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_NO_MEDIA and not error.retryable
    assert len(fake.calls("generateContent")) == 1
    if kind == "no_media":
        assert "describe the picture in words" in error.message  # the model's own words


async def test_api_key_never_leaks(
    fake: FakeGemini, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    fake.fail("generateContent", 503, times=1, message=f"backend saw key {fake.api_key}")
    fake.fail("generateContent", 400, message=f"echo {fake.api_key} ?key={fake.api_key}")
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer"), ctx)
    assert error.code == ErrorCode.ERROR_CODE_INVALID_REQUEST
    assert fake.api_key not in error.message and "[redacted]" in error.message
    assert fake.api_key not in caplog.text and "[redacted]" in caplog.text  # the retry warning
    for request in fake.requests:
        assert request.headers["x-goog-api-key"] == fake.api_key  # sent as a header only
        assert fake.api_key not in request.path and fake.api_key not in str(request.query)


async def test_wrong_api_key_is_a_configuration_error(fake: FakeGemini, tmp_path: Path):
    wrong = "AIzaSyWRONGWRONGWRONGWRONGWRONGWRONG123"
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    error = await failure(generator_for(fake, "developer", api_key=wrong), ctx)
    assert error.code == ErrorCode.ERROR_CODE_CONFIGURATION and not error.retryable
    assert "API key not valid" in error.message and wrong not in error.message


@pytest.mark.parametrize("vertex", [False, True])
async def test_configured_from_the_sdk_environment_variables(
    fake: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vertex: bool
):
    for name in ("GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", fake.api_key)
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true" if vertex else "false")
    # Both set on purpose: the generator must pick the one of its backend.
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url if not vertex else "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", fake.url if vertex else "http://127.0.0.1:9")
    monkeypatch.setenv("DEFAULT_IMAGE_MODEL", "gemini-3-pro-image-preview")
    ctx, _ = context(tmp_path, image=job_pb2.ImageParams(prompt="x"))
    # The worker's path: its settings read the default models, the generator the rest.
    monkeypatch.setenv("WORKER_TOKEN", "token")
    result = await run(build_generator(WorkerSettings.from_env()), ctx)

    assert result.model == "gemini-3-pro-image-preview"
    (call,) = fake.calls("generateContent")
    assert call.backend == ("vertex" if vertex else "developer")
    assert call.headers["x-goog-api-key"] == fake.api_key
