"""NotifierSettings.from_env."""

from __future__ import annotations

import pytest

from services.common.config import SettingsError
from services.notifier.settings import NotifierSettings

NAMES = (
    "NATS_URL",
    "JOB_SERVICE_ADDR",
    "LISTEN_ADDR",
    "NOTIFIER_WATCHER_QUEUE_SIZE",
    "NOTIFIER_READ_TIMEOUT_SECONDS",
    "NOTIFIER_READ_BATCH",
    "NOTIFIER_READ_CONCURRENCY",
    "NOTIFIER_IDLE_HEARTBEAT_SECONDS",
    "NOTIFIER_HEARTBEAT_SECONDS",
    "NOTIFIER_MAX_STREAMS_PER_USER",
    "NOTIFIER_MAX_STREAMS",
    "FEED_RETENTION_SECONDS",
    "AUTH_JWKS_FILE",
    "AUTH_JWKS_URL",
    "AUTH_AUDIENCE",
    "AUTH_ISSUER",
)


@pytest.fixture(autouse=True)
def required(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTH_JWT_SECRET", "x" * 32)
    monkeypatch.setenv("NOTIFIER_TOKEN", "header.claims.signature")


def test_defaults() -> None:
    settings = NotifierSettings.from_env()
    assert settings.server.listen_addr == "[::]:50052"
    assert settings.nats_url.startswith("nats://")
    assert settings.job_service_addr
    assert settings.watcher_queue_size >= 1
    assert settings.read_timeout_seconds > 0
    assert settings.heartbeat_seconds == 15.0
    assert settings.max_streams_per_user == 100
    assert settings.max_streams == 20000
    assert settings.feed_retention_seconds == 86400.0
    assert settings.auth.jwt_secret == "x" * 32
    assert settings.auth.audience == "media"
    assert settings.token == "header.claims.signature"


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://nats.example:4222")
    monkeypatch.setenv("JOB_SERVICE_ADDR", "jobs.example:50054")
    monkeypatch.setenv("LISTEN_ADDR", "127.0.0.1:0")
    monkeypatch.setenv("NOTIFIER_WATCHER_QUEUE_SIZE", "8")
    monkeypatch.setenv("NOTIFIER_READ_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("NOTIFIER_READ_BATCH", "20")
    monkeypatch.setenv("NOTIFIER_READ_CONCURRENCY", "4")
    monkeypatch.setenv("NOTIFIER_IDLE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("NOTIFIER_HEARTBEAT_SECONDS", "3")
    monkeypatch.setenv("NOTIFIER_MAX_STREAMS_PER_USER", "5")
    monkeypatch.setenv("NOTIFIER_MAX_STREAMS", "50")
    monkeypatch.setenv("FEED_RETENTION_SECONDS", "3600")
    monkeypatch.setenv("AUTH_ISSUER", "https://issuer.example")
    settings = NotifierSettings.from_env()
    assert settings.nats_url == "nats://nats.example:4222"
    assert settings.job_service_addr == "jobs.example:50054"
    assert settings.server.listen_addr == "127.0.0.1:0"
    assert settings.watcher_queue_size == 8
    assert settings.read_timeout_seconds == 2.5
    assert settings.read_batch == 20
    assert settings.read_concurrency == 4
    assert settings.idle_heartbeat_seconds == 1.0
    assert settings.heartbeat_seconds == 3.0
    assert (settings.max_streams_per_user, settings.max_streams) == (5, 50)
    assert settings.feed_retention_seconds == 3600.0
    assert settings.auth.issuer == "https://issuer.example"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFIER_WATCHER_QUEUE_SIZE", "0"),
        ("NOTIFIER_WATCHER_QUEUE_SIZE", "many"),
        ("NOTIFIER_READ_TIMEOUT_SECONDS", "0"),
        ("NOTIFIER_READ_BATCH", "501"),
        ("NOTIFIER_READ_CONCURRENCY", "0"),
        ("NOTIFIER_IDLE_HEARTBEAT_SECONDS", "-1"),
        ("NOTIFIER_HEARTBEAT_SECONDS", "0"),
        ("NOTIFIER_MAX_STREAMS_PER_USER", "0"),
        ("NOTIFIER_MAX_STREAMS", "0"),
        ("FEED_RETENTION_SECONDS", "0"),
        ("NOTIFIER_TOKEN", ""),
        ("AUTH_JWT_SECRET", "short"),
    ],
)
def test_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError):
        NotifierSettings.from_env()


def test_needs_a_way_to_verify_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_JWT_SECRET")
    with pytest.raises(SettingsError):
        NotifierSettings.from_env()
