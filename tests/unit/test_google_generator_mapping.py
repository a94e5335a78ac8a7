"""The Google generator's pure parts: parameter mapping, image finishing, errors, settings."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from google.genai import errors as genai_errors
from PIL import Image

from media.v1 import job_pb2
from services.common.config import SettingsError
from services.media_worker.generators.base import GenerationError
from services.media_worker.generators.google import build_generator
from services.media_worker.generators.google_errors import (
    RetryPolicy,
    Scrubber,
    classify,
    retry_hint_seconds,
)
from services.media_worker.generators.google_images import (
    GEMINI_ASPECT_RATIOS,
    IMAGEN_ASPECT_RATIOS,
    finalize_image,
    nearest_aspect_ratio,
    plan_images,
)
from services.media_worker.generators.google_settings import GoogleSettings
from services.media_worker.generators.google_videos import (
    operation_failure,
    plan_video,
    progress_at,
)
from services.media_worker.settings import WorkerSettings

ErrorCode = job_pb2.ErrorCode
KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"  # shaped like a real key, not one
MODELS = {
    "default_image_model": "gemini-2.5-flash-image",
    "default_video_model": "veo-2.0-generate-001",
}


@pytest.mark.parametrize(
    ("size", "ratios", "expected"),
    [
        ("1024x1024", GEMINI_ASPECT_RATIOS, "1:1"),
        ("256x256", GEMINI_ASPECT_RATIOS, "1:1"),
        ("832x1248", GEMINI_ASPECT_RATIOS, "2:3"),
        ("1344x768", GEMINI_ASPECT_RATIOS, "16:9"),
        ("1536x672", GEMINI_ASPECT_RATIOS, "21:9"),
        ("896x1152", GEMINI_ASPECT_RATIOS, "4:5"),
        ("1536x672", IMAGEN_ASPECT_RATIOS, "16:9"),
        ("896x1152", IMAGEN_ASPECT_RATIOS, "3:4"),
    ],
)
def test_size_maps_to_nearest_aspect_ratio(size: str, ratios: tuple[str, ...], expected: str):
    width, height = (int(part) for part in size.split("x"))
    assert nearest_aspect_ratio(width, height, ratios) == expected


def test_plan_images_folds_style_and_quality_and_picks_model():
    params = job_pb2.ImageParams(
        prompt="a lighthouse",
        size="",
        number_of_images=0,
        format=job_pb2.IMAGE_FORMAT_WEBP,
        style=job_pb2.IMAGE_STYLE_WATERCOLOR,
        quality=job_pb2.IMAGE_QUALITY_HIGH,
    )
    plan = plan_images(params, "gemini-2.5-flash-image")
    assert plan.model == "gemini-2.5-flash-image" and plan.family == "gemini"
    assert (plan.width, plan.height, plan.count) == (1024, 1024, 1)
    assert "watercolor" in plan.prompt and "high detail" in plan.prompt
    assert plan.prompt.startswith("a lighthouse")
    assert (plan.pil_format, plan.mime_type, plan.extension) == ("WEBP", "image/webp", "webp")
    assert plan.image_size is None  # gemini-2.5-flash-image takes no size class
    imagen = plan_images(
        job_pb2.ImageParams(prompt="x", quality=job_pb2.IMAGE_QUALITY_HIGH),
        "imagen-4.0-generate-001",
    )
    assert imagen.family == "imagen" and imagen.image_size == "2K"
    fast = plan_images(job_pb2.ImageParams(prompt="x", model="imagen-4.0-fast-generate-001"), "")
    assert fast.image_size is None


def test_plan_images_rejects_unknown_model():
    with pytest.raises(GenerationError) as caught:
        plan_images(job_pb2.ImageParams(prompt="x", model="dall-e-3"), "gemini-2.5-flash-image")
    assert caught.value.code == ErrorCode.ERROR_CODE_INVALID_REQUEST


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (10, 20, 30, 0) if mode == "RGBA" else (10, 20, 30)).save(
        out, format="PNG"
    )
    return out.getvalue()


def test_finalize_keeps_bytes_when_size_and_format_match(tmp_path: Path):
    plan = plan_images(job_pb2.ImageParams(prompt="x", size="1024x1024"), "gemini-2.5-flash-image")
    data = _png(1024, 1024)
    assert finalize_image(data, plan, tmp_path / "a.png") is None
    assert (tmp_path / "a.png").read_bytes() == data


def test_finalize_resizes_crops_and_converts(tmp_path: Path):
    plan = plan_images(
        job_pb2.ImageParams(prompt="x", size="1536x672", format=job_pb2.IMAGE_FORMAT_JPEG),
        "imagen-4.0-generate-001",
    )
    note = finalize_image(_png(1408, 768, "RGBA"), plan, tmp_path / "a.jpg")
    assert note is not None and "center-cropped" in note and "1536x672" in note
    with Image.open(tmp_path / "a.jpg") as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (1536, 672), "RGB")


def test_finalize_rejects_garbage(tmp_path: Path):
    plan = plan_images(job_pb2.ImageParams(prompt="x"), "gemini-2.5-flash-image")
    with pytest.raises(GenerationError) as caught:
        finalize_image(b"not an image", plan, tmp_path / "a.png")
    assert caught.value.code == ErrorCode.ERROR_CODE_NO_MEDIA


@pytest.mark.parametrize(
    ("model", "requested", "made"),
    [
        ("veo-3.1-generate-preview", 0, 8),
        ("veo-3.1-generate-preview", 4, 4),
        ("veo-3.1-generate-preview", 5, 6),
        ("veo-3.1-generate-preview", 7, 8),
        ("veo-2.0-generate-001", 4, 5),
        ("veo-2.0-generate-001", 7, 7),
    ],
)
def test_video_duration_fits_the_model(model: str, requested: int, made: int):
    plan = plan_video(job_pb2.VideoParams(prompt="x", duration_seconds=requested), model)
    assert plan.duration == made
    assert bool(plan.notes) == (requested not in (0, made))


def test_plan_video_maps_enums():
    plan = plan_video(
        job_pb2.VideoParams(
            prompt=" a dog ",
            aspect_ratio=job_pb2.ASPECT_RATIO_9_16,
            person_generation=job_pb2.PERSON_GENERATION_DONT_ALLOW,
            number_of_videos=3,
        ),
        "veo-3.1-generate-preview",
    )
    assert (plan.prompt, plan.aspect_ratio, plan.person_generation, plan.count) == (
        "a dog",
        "9:16",
        "dont_allow",
        3,
    )
    default = plan_video(job_pb2.VideoParams(prompt="x"), "veo-3.1-generate-preview")
    assert (default.aspect_ratio, default.person_generation, default.count) == ("16:9", None, 1)
    with pytest.raises(GenerationError):
        plan_video(job_pb2.VideoParams(prompt="x", model="gemini-2.5-flash-image"), "")


def test_progress_estimate_rises_and_stays_below_90():
    values = [progress_at(t, 90.0) for t in (0, 10, 45, 90, 180, 900, 90000)]
    assert values == sorted(values)
    assert values[0] == 5 and 65 <= values[3] <= 80 and values[-1] < 90


def test_scrubber_removes_keys_and_tokens():
    scrub = Scrubber(["my-secret-key-123"])
    text = scrub(
        f"bad my-secret-key-123 and {KEY} at https://x/y?key=abc&alt=media, Bearer ya29.tok-en"
    )
    assert "my-secret-key-123" not in text and KEY not in text
    assert "key=abc" not in text and "ya29" not in text
    assert text.count("[redacted]") == 4


def _api_error(code: int, message: str, details: list | None = None) -> genai_errors.APIError:
    error = {"code": code, "message": message, "status": "X"}
    if details:
        error["details"] = details
    return genai_errors.APIError(code, {"error": error})


@pytest.mark.parametrize(
    ("code", "message", "expected", "retryable"),
    [
        (429, "quota", ErrorCode.ERROR_CODE_RATE_LIMITED, True),
        (500, "boom", ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),
        (503, "overloaded", ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),
        (504, "slow", ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),
        (400, "bad field", ErrorCode.ERROR_CODE_INVALID_REQUEST, False),
        (
            400,
            "violates Google's Responsible AI practices",
            ErrorCode.ERROR_CODE_SAFETY_BLOCKED,
            False,
        ),
        (404, "model not found", ErrorCode.ERROR_CODE_INVALID_REQUEST, False),
        (403, "denied", ErrorCode.ERROR_CODE_CONFIGURATION, False),
        (401, "who", ErrorCode.ERROR_CODE_CONFIGURATION, False),
    ],
)
def test_api_errors_map_to_codes(code: int, message: str, expected: int, retryable: bool):
    error = classify(_api_error(code, message), Scrubber([]), "call")
    assert error is not None
    assert (error.code, error.retryable) == (expected, retryable)
    assert message in error.message and f"HTTP {code}" in error.message


def test_invalid_api_key_is_configuration_and_scrubbed():
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    error = classify(_api_error(400, f"API key {KEY} not valid", details), Scrubber([KEY]), "c")
    assert error is not None and error.code == ErrorCode.ERROR_CODE_CONFIGURATION
    assert KEY not in error.message


def test_retry_hint_and_backoff():
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]
    assert retry_hint_seconds(_api_error(429, "slow down", details)) == 2.5
    assert retry_hint_seconds(_api_error(429, "slow down")) is None
    policy = RetryPolicy(attempts=5, base_delay_seconds=1.0, max_delay_seconds=4.0)
    for index in range(6):
        delay = policy.delay(index)
        assert 0 < delay <= 4.0
        assert delay >= min(4.0, 2**index) / 2
    assert policy.delay(0, hint=3.0) >= 3.0
    assert policy.delay(0, hint=60.0) <= 4.0  # the hint is capped too


def test_operation_errors_map():
    scrub = Scrubber([])
    blocked = operation_failure(
        {"code": 3, "message": "violates Vertex AI's usage guidelines"}, "veo", scrub
    )
    assert blocked.code == ErrorCode.ERROR_CODE_SAFETY_BLOCKED and not blocked.retryable
    overloaded = operation_failure({"code": 14, "message": "try later"}, "veo", scrub)
    assert overloaded.code == ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE and overloaded.retryable
    odd = operation_failure({"code": 99}, "veo", scrub)
    assert odd.code == ErrorCode.ERROR_CODE_GENERATION_FAILED and not odd.retryable


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch):
    for name in ("GOOGLE_API_KEY", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("VIDEO_DEADLINE_SECONDS", "30")
    settings = GoogleSettings.from_env(**MODELS)
    assert settings.backend == "vertex" and settings.vertex_auth == "adc"  # project wins
    assert settings.location == "us-central1" and settings.base_url == "http://127.0.0.1:1"
    assert settings.video_deadline_seconds == 30.0 and settings.configured
    assert KEY not in repr(settings) and KEY not in settings.describe()
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    assert GoogleSettings.from_env(**MODELS).vertex_auth == "api_key"  # express mode
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "false")
    developer = GoogleSettings.from_env(**MODELS)
    assert developer.backend == "developer" and developer.base_url == ""
    monkeypatch.setenv("VIDEO_OUTPUT_GCS_URI", "gs://bucket/videos")
    with pytest.raises(SettingsError):
        GoogleSettings.from_env(**MODELS)  # Cloud Storage output needs Vertex AI with ADC


def test_build_generator_takes_the_default_models_from_the_worker_settings(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("WORKER_TOKEN", "token")
    monkeypatch.setenv("DEFAULT_IMAGE_MODEL", "imagen-4.0-generate-001")
    monkeypatch.setenv("DEFAULT_VIDEO_MODEL", "veo-2.0-generate-001")
    generator = build_generator(WorkerSettings.from_env())
    assert generator.name == "google"
    assert generator.settings.default_image_model == "imagen-4.0-generate-001"
    assert generator.settings.default_video_model == "veo-2.0-generate-001"
    monkeypatch.delenv("DEFAULT_IMAGE_MODEL")
    monkeypatch.delenv("DEFAULT_VIDEO_MODEL")
    defaults = build_generator(WorkerSettings.from_env()).settings
    assert defaults.default_image_model == "gemini-2.5-flash-image"
    assert defaults.default_video_model == "veo-3.1-generate-preview"
