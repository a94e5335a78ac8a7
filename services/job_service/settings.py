"""job_service settings, all from the environment (see the README's table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AuthSettings,
    S3Settings,
    ServerSettings,
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_positive,
    env_required,
    env_str,
    max_input_image_bytes,
    webhook_sealer,
    webhook_url_policy,
)
from services.common.sealing import Sealer
from services.common.webhook_urls import UrlPolicy

IMAGE_MODELS = (
    "gemini-2.5-flash-image",
    "gemini-3-pro-image-preview",
    "imagen-4.0-generate-001",
    "imagen-4.0-fast-generate-001",
    "imagen-4.0-ultra-generate-001",
    "imagen-3.0-generate-002",
    "local",
)
VIDEO_MODELS = (
    "veo-3.1-generate-preview",
    "veo-3.1-fast-generate-preview",
    "veo-3.0-generate-001",
    "veo-3.0-fast-generate-001",
    "veo-2.0-generate-001",
    "local",
)


# Per-user limits of CreateJob, on unless set to 0 (README, job_service settings, says why these).
RATE_LIMIT_PER_MINUTE = 30
RATE_LIMIT_BURST = 10
MAX_ACTIVE_JOBS_PER_USER = 10

MIB = 1024 * 1024
# Input images sent inline in CreateJob: larger ones go through CreateInputUpload.
MAX_INLINE_IMAGE_BYTES = 1 * MIB
# Inline image bytes all CreateJob calls of a process may hold at once (MAX_INPUT_BYTES_IN_FLIGHT):
# half of what MAX_CONCURRENT_RPCS calls with the largest inline image would hold.
MAX_INPUT_BYTES_IN_FLIGHT = 16 * MIB
# Room a CreateJob needs besides its inline image: two prompts of 8000 characters of up to 4
# bytes each, and the small fields.
_REQUEST_ROOM = 80 * 1024
# Concurrent RPCs job_service serves per listener (MAX_CONCURRENT_RPCS). A call holds about three
# copies of its message (transport, bytes, parsed): 32 x 3 x 2 MiB beside a ~115 MiB process
# (README, MAX_CONCURRENT_RPCS).
MAX_CONCURRENT_RPCS = 32
UPLOAD_URL_TTL_SECONDS = 900
_MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # what S3 signs at most (SigV4)

# Webhook endpoints (WebhookService): how long a rotated-out secret still signs, and how many
# endpoints a user may register (one-off endpoints CreateJob makes for a job do not count).
WEBHOOK_SECRET_OVERLAP_SECONDS = 24 * 3600
MAX_WEBHOOK_ENDPOINTS_PER_USER = 20
# What the sweeper keeps: notifications, and finished webhook deliveries (with the one-off
# endpoints of finished jobs).
NOTIFICATION_RETENTION_SECONDS = 30 * 24 * 3600
WEBHOOK_DELIVERY_RETENTION_SECONDS = 30 * 24 * 3600

# What the models accept at most; the settings may only lower these.
MODEL_MAX_IMAGES = 4
MODEL_MAX_VIDEOS = 4
MODEL_VIDEO_SECONDS = (4, 8)


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int
    max_input_image_bytes: int
    max_page_size: int
    image_models: tuple[str, ...]
    video_models: tuple[str, ...]
    max_images: int = MODEL_MAX_IMAGES  # per job
    max_videos: int = MODEL_MAX_VIDEOS  # per job
    max_video_seconds: int = MODEL_VIDEO_SECONDS[1]
    # CreateJob calls per user per minute (0: no limit), with bursts of up to rate_limit_burst
    # (0: one minute's worth). Shared by all replicas through NATS (ratelimit.py).
    rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE
    rate_limit_burst: int = RATE_LIMIT_BURST
    # Queued plus running jobs a user may have (0: no cap); checked in Postgres, so it holds
    # across replicas.
    max_active_jobs_per_user: int = MAX_ACTIVE_JOBS_PER_USER
    # An input image sent inline (CreateJob's input_image.data); 0: inline images are refused.
    max_inline_image_bytes: int = MAX_INLINE_IMAGE_BYTES
    # Inline image bytes held by all CreateJob calls of this process at once; a create that would
    # go over is RESOURCE_EXHAUSTED (retry shortly) rather than queued.
    max_input_bytes_in_flight: int = MAX_INPUT_BYTES_IN_FLIGHT
    # GRPC_MAX_MESSAGE_BYTES: a ListJobs page holds fewer jobs rather than go over it.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


def _at_most(name: str, model_max: int, minimum: int) -> int:
    value = env_int(name, model_max, minimum=minimum)
    if value > model_max:
        raise SettingsError(f"{name} must be at most {model_max} (what the models accept)")
    return value


def _input_limits(max_input_image: int, max_message: int) -> dict[str, int]:
    """MAX_INLINE_IMAGE_BYTES and MAX_INPUT_BYTES_IN_FLIGHT, checked against the limits they
    must fit in."""
    inline = env_int("MAX_INLINE_IMAGE_BYTES", MAX_INLINE_IMAGE_BYTES, minimum=0)
    if inline + _REQUEST_ROOM > max_message:
        raise SettingsError(
            f"MAX_INLINE_IMAGE_BYTES ({inline}) plus {_REQUEST_ROOM} bytes for the rest of a "
            f"CreateJob must fit in GRPC_MAX_MESSAGE_BYTES ({max_message})"
        )
    inline = min(inline, max_input_image)
    in_flight = env_int("MAX_INPUT_BYTES_IN_FLIGHT", MAX_INPUT_BYTES_IN_FLIGHT, minimum=1)
    if in_flight < inline:
        raise SettingsError(
            f"MAX_INPUT_BYTES_IN_FLIGHT ({in_flight}) must be at least MAX_INLINE_IMAGE_BYTES "
            f"({inline}), or no inline image could ever be accepted"
        )
    return {
        "max_inline_image_bytes": inline,
        "max_input_bytes_in_flight": in_flight,
        "max_message_bytes": max_message,
    }


def database_url_from_env() -> str:
    """DATABASE_URL alone: all that `migrate` needs (not the service's secrets)."""
    return env_required("DATABASE_URL")


@dataclass(frozen=True)
class SweepSettings:
    """What the sweeper (sweeper.py) deletes from the bucket, and how often."""

    interval_seconds: float = 60.0  # between rounds; 0: this replica never sweeps
    input_retention_seconds: float = 0.0  # a finished job's input image is kept this long
    grace_seconds: float = 3600.0  # an object younger than this is never an orphan
    max_per_round: int = 10_000  # objects listed per prefix, and finished jobs read, per round
    # Rows deleted from the database once older than these (also at most max_per_round per
    # table and round): notifications; webhook deliveries that are no longer pending, and the
    # one-off endpoints of jobs that finished.
    notification_retention_seconds: float = NOTIFICATION_RETENTION_SECONDS
    webhook_delivery_retention_seconds: float = WEBHOOK_DELIVERY_RETENTION_SECONDS

    @classmethod
    def from_env(cls) -> SweepSettings:
        return cls(
            interval_seconds=_non_negative("SWEEP_INTERVAL_SECONDS", 60.0),
            input_retention_seconds=_non_negative("INPUT_RETENTION_SECONDS", 0.0),
            grace_seconds=_non_negative("SWEEP_GRACE_SECONDS", 3600.0),
            max_per_round=env_int("SWEEP_MAX_PER_ROUND", 10_000, minimum=1),
            notification_retention_seconds=env_positive(
                "NOTIFICATION_RETENTION_SECONDS", NOTIFICATION_RETENTION_SECONDS
            ),
            webhook_delivery_retention_seconds=env_positive(
                "WEBHOOK_DELIVERY_RETENTION_SECONDS", WEBHOOK_DELIVERY_RETENTION_SECONDS
            ),
        )


@dataclass(frozen=True)
class WebhookSettings:
    """WebhookService's: how secrets are sealed at rest, where endpoints may point, secret
    rotation, the cap per user."""

    sealer: Sealer  # WEBHOOK_SECRETS_KEYS
    # WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOW_PRIVATE_NETWORKS
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    secret_overlap_seconds: int = WEBHOOK_SECRET_OVERLAP_SECONDS
    max_endpoints_per_user: int = MAX_WEBHOOK_ENDPOINTS_PER_USER

    @classmethod
    def from_env(cls) -> WebhookSettings:
        return cls(
            sealer=webhook_sealer(),
            url_policy=webhook_url_policy(),
            secret_overlap_seconds=env_int(
                "WEBHOOK_SECRET_OVERLAP_SECONDS", WEBHOOK_SECRET_OVERLAP_SECONDS, minimum=0
            ),
            max_endpoints_per_user=env_int(
                "MAX_WEBHOOK_ENDPOINTS_PER_USER", MAX_WEBHOOK_ENDPOINTS_PER_USER, minimum=1
            ),
        )


def _non_negative(name: str, default: float) -> float:
    value = env_float(name, default)
    if not value >= 0:  # also refuses nan
        raise SettingsError(f"{name} must be at least 0, got {value}")
    return value


@dataclass(frozen=True)
class JobServiceSettings:
    database_url: str
    nats_url: str
    s3: S3Settings
    server: ServerSettings
    auth: AuthSettings
    limits: Limits
    db_pool_size: int
    migrate_on_start: bool
    max_attempts: int
    presign_ttl_seconds: int
    outbox_batch: int
    outbox_poll_seconds: float
    webhooks: WebhookSettings
    metrics_sample_seconds: float = 5.0
    sweep: SweepSettings = SweepSettings()
    # WorkerService on a listener of its own, so that the network can keep clients off it;
    # empty: it is served on LISTEN_ADDR beside JobService (a minimal local setup).
    worker_listen_addr: str = ""
    # Bulkheads: SQL runs on DB_POOL_SIZE threads of its own, S3 on s3_threads; a call that gets
    # no thread or no answer within its timeout is answered UNAVAILABLE.
    db_call_timeout_seconds: float = 5.0
    s3_threads: int = 8
    s3_call_timeout_seconds: float = 5.0
    # The S3 client's own bounds, sized for small objects (input images): how long a call that
    # storage does not answer holds its thread, about max_attempts * (connect + read).
    s3_connect_timeout_seconds: float = 2.0
    s3_read_timeout_seconds: float = 5.0
    s3_max_attempts: int = 2
    # Lifetime of the presigned PUT URLs CreateInputUpload returns.
    upload_url_ttl_seconds: int = UPLOAD_URL_TTL_SECONDS
    # Calls the gRPC server serves at once (0: no cap); more are RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS

    def __post_init__(self) -> None:
        if self.worker_listen_addr and self.worker_listen_addr == self.server.listen_addr:
            raise SettingsError("WORKER_LISTEN_ADDR must differ from LISTEN_ADDR (or be unset)")

    @classmethod
    def from_env(cls) -> JobServiceSettings:
        database_url = database_url_from_env()
        server = ServerSettings.from_env(default_port=50051)
        input_image_bytes = max_input_image_bytes()
        upload_ttl = env_int("UPLOAD_URL_TTL_SECONDS", UPLOAD_URL_TTL_SECONDS, minimum=1)
        if upload_ttl > _MAX_PRESIGN_SECONDS:
            raise SettingsError(f"UPLOAD_URL_TTL_SECONDS must be at most {_MAX_PRESIGN_SECONDS}")
        return cls(
            database_url=database_url,
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            s3=S3Settings.from_env(),
            server=server,
            auth=AuthSettings.from_env(),
            limits=Limits(
                max_prompt_chars=env_int("MAX_PROMPT_CHARS", 8000, minimum=1),
                max_input_image_bytes=input_image_bytes,
                max_page_size=env_int("MAX_PAGE_SIZE", 100, minimum=1),
                image_models=env_list("IMAGE_MODELS", IMAGE_MODELS),
                video_models=env_list("VIDEO_MODELS", VIDEO_MODELS),
                max_images=_at_most("MAX_IMAGES_PER_JOB", MODEL_MAX_IMAGES, 1),
                max_videos=_at_most("MAX_VIDEOS_PER_JOB", MODEL_MAX_VIDEOS, 1),
                max_video_seconds=_at_most(
                    "MAX_VIDEO_SECONDS", MODEL_VIDEO_SECONDS[1], MODEL_VIDEO_SECONDS[0]
                ),
                rate_limit_per_minute=env_int(
                    "RATE_LIMIT_PER_MINUTE", RATE_LIMIT_PER_MINUTE, minimum=0
                ),
                rate_limit_burst=env_int("RATE_LIMIT_BURST", RATE_LIMIT_BURST, minimum=0),
                max_active_jobs_per_user=env_int(
                    "MAX_ACTIVE_JOBS_PER_USER", MAX_ACTIVE_JOBS_PER_USER, minimum=0
                ),
                **_input_limits(input_image_bytes, server.max_message_bytes),
            ),
            db_pool_size=env_int("DB_POOL_SIZE", 16, minimum=1),
            migrate_on_start=env_bool("MIGRATE_ON_START", True),
            max_attempts=env_int("MAX_ATTEMPTS", 3, minimum=1),
            presign_ttl_seconds=env_int("PRESIGN_TTL_SECONDS", 3600, minimum=1),
            outbox_batch=env_int("OUTBOX_BATCH", 256, minimum=1),
            outbox_poll_seconds=env_float("OUTBOX_POLL_SECONDS", 1.0),
            metrics_sample_seconds=env_float("METRICS_SAMPLE_SECONDS", 5.0),
            sweep=SweepSettings.from_env(),
            webhooks=WebhookSettings.from_env(),
            worker_listen_addr=env_str("WORKER_LISTEN_ADDR", ""),
            db_call_timeout_seconds=env_positive("DB_CALL_TIMEOUT_SECONDS", 5.0),
            s3_threads=env_int("S3_THREADS", 8, minimum=1),
            s3_call_timeout_seconds=env_positive("S3_CALL_TIMEOUT_SECONDS", 5.0),
            s3_connect_timeout_seconds=env_positive("S3_CONNECT_TIMEOUT_SECONDS", 2.0),
            s3_read_timeout_seconds=env_positive("S3_READ_TIMEOUT_SECONDS", 5.0),
            s3_max_attempts=env_int("S3_MAX_ATTEMPTS", 2, minimum=1),
            upload_url_ttl_seconds=upload_ttl,
            max_concurrent_rpcs=env_int("MAX_CONCURRENT_RPCS", MAX_CONCURRENT_RPCS, minimum=0),
        )
