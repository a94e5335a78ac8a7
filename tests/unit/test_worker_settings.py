from __future__ import annotations

import pytest

from services.common.config import SettingsError
from services.media_worker.settings import WorkerSettings, resolve_generator

_GOOGLE_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GENERATOR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_GOOGLE_VARS, "WORKER_KINDS", "WORKER_CONCURRENCY", "ACK_WAIT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKER_TOKEN", "token")


def test_defaults() -> None:
    settings = WorkerSettings.from_env()
    assert settings.kinds == ("image", "video")
    assert settings.concurrency == 4
    assert settings.ack_wait_seconds == 30
    assert settings.generator == "local"
    assert settings.default_image_model == "gemini-2.5-flash-image"
    assert settings.default_video_model == "veo-3.1-generate-preview"
    assert settings.server.listen_addr.endswith(":50053")


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
    ],
)
def test_bad_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError):
        WorkerSettings.from_env()


def test_kinds_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_KINDS", "video")
    assert WorkerSettings.from_env().kinds == ("video",)
