"""WebhookSettings.from_env: the names and defaults the design fixes, and refusals."""

from __future__ import annotations

import pytest

from services.common.config import SettingsError
from services.common.sealing import Sealer
from services.webhooks.settings import WebhookSettings, parse_schedule

NAMES = (
    "NATS_URL",
    "JOB_SERVICE_ADDR",
    "LISTEN_ADDR",
    "DB_POOL_SIZE",
    "DB_CALL_TIMEOUT_SECONDS",
    "WEBHOOK_ALLOW_HTTP",
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS",
    "WEBHOOK_TIMEOUT_SECONDS",
    "WEBHOOK_RETRY_SCHEDULE",
    "WEBHOOK_RETRY_JITTER",
    "WEBHOOK_DISABLE_AFTER_SECONDS",
    "WEBHOOK_MAX_IN_FLIGHT",
    "WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT",
    "WEBHOOK_MAX_IN_FLIGHT_PER_USER",
    "WEBHOOK_RESPONSE_MAX_BYTES",
    "WEBHOOK_POLL_SECONDS",
    "WEBHOOK_EVENTS_RETENTION_SECONDS",
)


@pytest.fixture(autouse=True)
def required(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/media")
    monkeypatch.setenv("WEBHOOKS_TOKEN", "header.claims.signature")
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", Sealer.new_key())


def test_defaults() -> None:
    settings = WebhookSettings.from_env()
    assert settings.server.listen_addr == "[::]:50055"
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.retry_jitter == 0.1
    assert settings.timeout_seconds == 15
    assert settings.disable_after_seconds == 432000
    assert (settings.max_in_flight, settings.max_in_flight_per_endpoint) == (64, 4)
    assert settings.max_in_flight_per_user == 16
    assert settings.response_max_bytes == 1024
    assert settings.poll_seconds == 1.0
    assert settings.events_retention_seconds == 7 * 86400
    assert not settings.url_policy.allow_http and not settings.url_policy.allow_private
    # A claim outlasts an attempt: the job read, the request and recording it.
    assert settings.lease_seconds > settings.timeout_seconds + settings.db_call_timeout_seconds


def test_a_compressed_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", " 0.2, 0.2 ,1")
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    settings = WebhookSettings.from_env()
    assert settings.retry_schedule == (0.2, 0.2, 1.0)
    assert settings.url_policy.allow_private


@pytest.mark.parametrize("raw", ["", "5,,300", "5,-1", "0", "five", "5,nan"])
def test_a_schedule_must_be_positive_seconds(raw: str) -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_RETRY_SCHEDULE"):
        parse_schedule("WEBHOOK_RETRY_SCHEDULE", raw)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_RETRY_JITTER", "1"),
        ("WEBHOOK_RETRY_JITTER", "-0.1"),
        ("WEBHOOK_TIMEOUT_SECONDS", "0"),
        ("WEBHOOK_MAX_IN_FLIGHT", "0"),
        ("WEBHOOK_POLL_SECONDS", "-1"),
        ("WEBHOOK_EVENTS_RETENTION_SECONDS", "0"),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "maybe"),
    ],
)
def test_bad_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        WebhookSettings.from_env()


def test_the_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOKS_TOKEN")
    with pytest.raises(SettingsError, match="WEBHOOKS_TOKEN"):
        WebhookSettings.from_env()
