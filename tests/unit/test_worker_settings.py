from __future__ import annotations

import tempfile

import pytest

from services.common.config import SettingsError
from services.media_worker.settings import WorkerSettings, resolve_generator

_GOOGLE_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GENERATOR")
_WORKER_VARS = (
    "NATS_URL",
    "JOB_SERVICE_ADDR",
    "LISTEN_ADDR",
    "WORKER_KINDS",
    "WORKER_CONCURRENCY",
    "ACK_WAIT_SECONDS",
    "UPLOAD_ATTEMPTS",
    "RETRY_BASE_DELAY_SECONDS",
    "RETRY_MAX_DELAY_SECONDS",
    "RPC_TIMEOUT_SECONDS",
    "RPC_ATTEMPTS",
    "COMPLETE_ATTEMPTS",
    "PROGRESS_INTERVAL_SECONDS",
    "FETCH_TIMEOUT_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "MAX_INPUT_IMAGE_BYTES",
    "WORK_DIR",
    "LOCAL_VIDEO_LONG_SIDE",
    "LOCAL_VIDEO_PRESET",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_GOOGLE_VARS, *_WORKER_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKER_TOKEN", "token")


def test_defaults() -> None:
    settings = WorkerSettings.from_env()
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.job_service_addr == "127.0.0.1:50051"
    assert settings.worker_token == "token"
    assert settings.server.listen_addr == "[::]:50053"
    assert settings.kinds == ("image", "video")
    assert settings.concurrency == 4
    assert settings.ack_wait_seconds == 30
    assert settings.generator == "local"
    assert settings.default_image_model == "gemini-2.5-flash-image"
    assert settings.default_video_model == "veo-3.1-generate-preview"
    assert settings.upload_attempts == 4
    assert (settings.retry_base_delay_seconds, settings.retry_max_delay_seconds) == (2.0, 60.0)
    assert (settings.rpc_timeout_seconds, settings.rpc_attempts) == (10.0, 4)
    assert settings.complete_attempts == 8
    assert settings.progress_interval_seconds == 0.25
    assert settings.fetch_timeout_seconds == 2.0
    # Jobs outlast calls: the worker's grace is longer than a server's 20 s.
    assert settings.server.shutdown_grace_seconds == 25.0
    # The same limit job_service applies to the input image in CreateJob.
    assert settings.max_input_image_bytes == 10 * 1024 * 1024
    assert settings.work_dir == tempfile.gettempdir()
    assert (settings.local_video_long_side, settings.local_video_preset) == (1280, "ultrafast")


def test_one_shutdown_grace_and_one_input_image_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE_SECONDS", "40")
    monkeypatch.setenv("MAX_INPUT_IMAGE_BYTES", "2048")
    # The names these had before mean nothing now.
    monkeypatch.setenv("WORKER_SHUTDOWN_GRACE_SECONDS", "99")
    monkeypatch.setenv("INPUT_IMAGE_MAX_BYTES", "99")
    settings = WorkerSettings.from_env()
    assert settings.server.shutdown_grace_seconds == 40.0
    assert settings.max_input_image_bytes == 2048


@pytest.mark.parametrize(
    ("name", "value"),
    [("GEMINI_API_KEY", "k"), ("GOOGLE_API_KEY", "k"), ("GOOGLE_GENAI_USE_VERTEXAI", "true")],
)
def test_auto_picks_google_when_credentials_are_set(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert resolve_generator("auto") == "google"
    assert resolve_generator("local") == "local"


def test_vertex_flag_false_stays_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "false")
    assert resolve_generator("auto") == "local"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_TOKEN", ""),
        ("WORKER_KINDS", "image,audio"),
        ("WORKER_CONCURRENCY", "0"),
        ("GENERATOR", "openai"),
        ("ACK_WAIT_SECONDS", "1"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
        ("MAX_INPUT_IMAGE_BYTES", "100"),  # under job_service's minimum of 1024
    ],
)
def test_bad_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError):
        WorkerSettings.from_env()


def test_kinds_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_KINDS", "video")
    assert WorkerSettings.from_env().kinds == ("video",)
