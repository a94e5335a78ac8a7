"""The notifier's settings, read from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerSettings, SettingsError, env_float, env_int, env_str

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class NotifierSettings:
    nats_url: str
    job_service_addr: str
    server: ServerSettings
    # Events a watcher may have waiting before it is marked lagging and resyncs through GetJob.
    watcher_queue_size: int
    get_job_timeout_seconds: float
    # How often JetStream sends heartbeats on the ordered consumer; two missed ones make the hub
    # recreate the consumer (this is how it recovers after a NATS restart).
    idle_heartbeat_seconds: float

    @classmethod
    def from_env(cls) -> NotifierSettings:
        timeout = env_float("NOTIFIER_GET_JOB_TIMEOUT_SECONDS", 5.0)
        if timeout <= 0:
            raise SettingsError("NOTIFIER_GET_JOB_TIMEOUT_SECONDS must be positive")
        heartbeat = env_float("NOTIFIER_IDLE_HEARTBEAT_SECONDS", 2.0)
        if heartbeat <= 0:
            raise SettingsError("NOTIFIER_IDLE_HEARTBEAT_SECONDS must be positive")
        return cls(
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            job_service_addr=env_str("JOB_SERVICE_ADDR", "127.0.0.1:50051"),
            server=ServerSettings.from_env(default_port=DEFAULT_PORT),
            watcher_queue_size=env_int("NOTIFIER_WATCHER_QUEUE_SIZE", 64, minimum=1),
            get_job_timeout_seconds=timeout,
            idle_heartbeat_seconds=heartbeat,
        )
