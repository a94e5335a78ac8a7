"""The notifier's settings, read from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    AuthSettings,
    ServerSettings,
    SettingsError,
    env_int,
    env_positive,
    env_required,
    env_str,
)

DEFAULT_PORT = 50052


def _read_batch() -> int:
    value = env_int("NOTIFIER_READ_BATCH", 100, minimum=1)
    if value > 500:  # job_service's ReadJobs takes at most 500 IDs
        raise SettingsError("NOTIFIER_READ_BATCH must be at most 500")
    return value


@dataclass(frozen=True)
class NotifierSettings:
    nats_url: str
    # Where JobReaderService is: job_service's internal listener (WORKER_LISTEN_ADDR when set).
    job_service_addr: str
    server: ServerSettings
    # Bearer tokens are verified here as job_service verifies them (same variables).
    auth: AuthSettings
    # The notifier's own credential for JobReaderService: a JWT with roles ["notifier"].
    token: str
    # Events a stream may have waiting before it is marked lagging (WatchJob resyncs from the
    # job cache; WatchJobs ends with UNAVAILABLE and resumes from its cursor).
    watcher_queue_size: int
    read_timeout_seconds: float  # deadline of a read from job_service
    read_batch: int  # jobs per ReadJobs call
    read_concurrency: int  # calls to job_service in flight at once
    # How often JetStream sends heartbeats on the ordered consumer; two missed ones make the hub
    # recreate the consumer (this is how it recovers after a NATS restart).
    idle_heartbeat_seconds: float
    heartbeat_seconds: float  # an idle watch stream gets a Heartbeat this often
    max_streams_per_user: int
    max_streams: int
    # How long MEDIA_EVENTS keeps events: how old a cursor may be before it gets a reset.
    feed_retention_seconds: float

    @classmethod
    def from_env(cls) -> NotifierSettings:
        token = env_required("NOTIFIER_TOKEN", 'a JWT with roles ["notifier"]')
        return cls(
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            job_service_addr=env_str("JOB_SERVICE_ADDR", "127.0.0.1:50051"),
            server=ServerSettings.from_env(default_port=DEFAULT_PORT),
            auth=AuthSettings.from_env(),
            token=token,
            watcher_queue_size=env_int("NOTIFIER_WATCHER_QUEUE_SIZE", 64, minimum=1),
            read_timeout_seconds=env_positive("NOTIFIER_READ_TIMEOUT_SECONDS", 5.0),
            read_batch=_read_batch(),
            read_concurrency=env_int("NOTIFIER_READ_CONCURRENCY", 8, minimum=1),
            idle_heartbeat_seconds=env_positive("NOTIFIER_IDLE_HEARTBEAT_SECONDS", 2.0),
            heartbeat_seconds=env_positive("NOTIFIER_HEARTBEAT_SECONDS", 15.0),
            max_streams_per_user=env_int("NOTIFIER_MAX_STREAMS_PER_USER", 100, minimum=1),
            max_streams=env_int("NOTIFIER_MAX_STREAMS", 20000, minimum=1),
            feed_retention_seconds=env_positive("FEED_RETENTION_SECONDS", 86400.0),
        )
