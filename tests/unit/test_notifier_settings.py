"""NotifierSettings.from_env."""

from __future__ import annotations

import pytest

from services.common.config import SettingsError
from services.notifier.settings import NotifierSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NATS_URL",
        "JOB_SERVICE_ADDR",
        "LISTEN_ADDR",
        "NOTIFIER_WATCHER_QUEUE_SIZE",
        "NOTIFIER_GET_JOB_TIMEOUT_SECONDS",
        "NOTIFIER_IDLE_HEARTBEAT_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = NotifierSettings.from_env()
    assert settings.server.listen_addr == "[::]:50052"
    assert settings.nats_url.startswith("nats://")
    assert settings.job_service_addr
    assert settings.watcher_queue_size >= 1
    assert settings.get_job_timeout_seconds > 0


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://nats.example:4222")
    monkeypatch.setenv("JOB_SERVICE_ADDR", "jobs.example:50051")
    monkeypatch.setenv("LISTEN_ADDR", "127.0.0.1:0")
    monkeypatch.setenv("NOTIFIER_WATCHER_QUEUE_SIZE", "8")
    monkeypatch.setenv("NOTIFIER_GET_JOB_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("NOTIFIER_IDLE_HEARTBEAT_SECONDS", "1")
    settings = NotifierSettings.from_env()
    assert settings.nats_url == "nats://nats.example:4222"
    assert settings.job_service_addr == "jobs.example:50051"
    assert settings.server.listen_addr == "127.0.0.1:0"
    assert settings.watcher_queue_size == 8
    assert settings.get_job_timeout_seconds == 2.5
    assert settings.idle_heartbeat_seconds == 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFIER_WATCHER_QUEUE_SIZE", "0"),
        ("NOTIFIER_WATCHER_QUEUE_SIZE", "many"),
        ("NOTIFIER_GET_JOB_TIMEOUT_SECONDS", "0"),
        ("NOTIFIER_IDLE_HEARTBEAT_SECONDS", "-1"),
    ],
)
def test_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError):
        NotifierSettings.from_env()
