"""The webhook sender's settings, read from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    ServerSettings,
    SettingsError,
    env_float,
    env_int,
    env_positive,
    env_required,
    env_str,
    webhook_sealer,
    webhook_url_policy,
)
from services.common.sealing import Sealer
from services.common.webhook_urls import UrlPolicy

DEFAULT_PORT = 50055
DEFAULT_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"


def parse_schedule(name: str, raw: str) -> tuple[float, ...]:
    """Comma-separated positive seconds: the wait after each failed attempt."""
    delays: list[float] = []
    for part in raw.split(","):
        try:
            delay = float(part.strip())
        except ValueError:
            raise SettingsError(f"{name} must be comma-separated seconds, got {raw!r}") from None
        if not delay > 0:
            raise SettingsError(f"{name} must hold positive seconds only, got {raw!r}")
        delays.append(delay)
    return tuple(delays)


def _jitter() -> float:
    value = env_float("WEBHOOK_RETRY_JITTER", 0.1)
    if not 0 <= value < 1:
        raise SettingsError(f"WEBHOOK_RETRY_JITTER must be at least 0 and below 1, got {value}")
    return value


@dataclass(frozen=True)
class WebhookSettings:
    database_url: str
    db_pool_size: int  # connections, and threads of the SQL bulkhead
    db_call_timeout_seconds: float  # one SQL call, waiting for a thread included
    nats_url: str
    # Where JobReaderService is: job_service's internal listener (WORKER_LISTEN_ADDR when set).
    job_service_addr: str
    token: str  # the sender's credential for JobReaderService: a JWT with roles ["webhooks"]
    server: ServerSettings
    url_policy: UrlPolicy  # WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOW_PRIVATE_NETWORKS
    sealer: Sealer  # WEBHOOK_SECRETS_KEYS: opens the endpoints' secrets
    timeout_seconds: float  # one HTTP attempt, connecting included
    retry_schedule: tuple[float, ...]  # the wait after each failed attempt; then it fails
    retry_jitter: float  # each wait is spread by +- this fraction
    disable_after_seconds: float  # failing this long without a success disables an endpoint
    max_in_flight: int
    max_in_flight_per_endpoint: int
    max_in_flight_per_user: int  # one owner's endpoints together, one-off job webhooks included
    response_max_bytes: int  # the most of a response body read (kept as the attempt's head)
    poll_seconds: float  # how often due deliveries (retries, lapsed claims) are looked for
    # How long an event waits in MEDIA_WEBHOOK_EVENTS for a sender (every replica down).
    events_retention_seconds: float

    @property
    def job_read_timeout_seconds(self) -> float:
        """A ReadJobs call for fresh output URLs: part of an attempt's time."""
        return min(5.0, self.timeout_seconds)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays this replica's: past the job read, the HTTP attempt
        and recording it, so it lapses only when this replica died (another then sends it)."""
        return (
            self.job_read_timeout_seconds + self.timeout_seconds + self.db_call_timeout_seconds + 1
        )

    @classmethod
    def from_env(cls) -> WebhookSettings:
        max_in_flight = env_int("WEBHOOK_MAX_IN_FLIGHT", 64, minimum=1)
        return cls(
            database_url=env_required("DATABASE_URL"),
            db_pool_size=env_int("DB_POOL_SIZE", 8, minimum=1),
            db_call_timeout_seconds=env_positive("DB_CALL_TIMEOUT_SECONDS", 5.0),
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            job_service_addr=env_str("JOB_SERVICE_ADDR", "127.0.0.1:50054"),
            token=env_required("WEBHOOKS_TOKEN", 'a JWT with roles ["webhooks"]'),
            server=ServerSettings.from_env(default_port=DEFAULT_PORT),
            url_policy=webhook_url_policy(),
            sealer=webhook_sealer(),
            timeout_seconds=env_positive("WEBHOOK_TIMEOUT_SECONDS", 15.0),
            retry_schedule=parse_schedule(
                "WEBHOOK_RETRY_SCHEDULE", env_str("WEBHOOK_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE)
            ),
            retry_jitter=_jitter(),
            disable_after_seconds=env_positive("WEBHOOK_DISABLE_AFTER_SECONDS", 432000.0),
            max_in_flight=max_in_flight,
            max_in_flight_per_endpoint=min(
                max_in_flight, env_int("WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", 4, minimum=1)
            ),
            max_in_flight_per_user=min(
                max_in_flight, env_int("WEBHOOK_MAX_IN_FLIGHT_PER_USER", 16, minimum=1)
            ),
            response_max_bytes=env_int("WEBHOOK_RESPONSE_MAX_BYTES", 1024, minimum=0),
            poll_seconds=env_positive("WEBHOOK_POLL_SECONDS", 1.0),
            events_retention_seconds=env_positive("WEBHOOK_EVENTS_RETENTION_SECONDS", 604800.0),
        )
