"""job_service settings, all from the environment (see the README's table)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    AuthSettings,
    S3Settings,
    ServerSettings,
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    max_input_image_bytes,
)

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
    # (0: one minute's worth). Held per process: N replicas allow N times the rate.
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 0
    # Queued plus running jobs a user may have (0: no cap); checked in Postgres, so it holds
    # across replicas.
    max_active_jobs_per_user: int = 0


def _at_most(name: str, model_max: int, minimum: int) -> int:
    value = env_int(name, model_max, minimum=minimum)
    if value > model_max:
        raise SettingsError(f"{name} must be at most {model_max} (what the models accept)")
    return value


def database_url_from_env() -> str:
    """DATABASE_URL alone: all that `migrate` needs (not the service's secrets)."""
    database_url = env_str("DATABASE_URL")
    if not database_url:
        raise SettingsError("DATABASE_URL must be set")
    return database_url


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
    metrics_sample_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> JobServiceSettings:
        database_url = database_url_from_env()
        return cls(
            database_url=database_url,
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            s3=S3Settings.from_env(),
            server=ServerSettings.from_env(default_port=50051),
            auth=AuthSettings.from_env(),
            limits=Limits(
                max_prompt_chars=env_int("MAX_PROMPT_CHARS", 8000, minimum=1),
                max_input_image_bytes=max_input_image_bytes(),
                max_page_size=env_int("MAX_PAGE_SIZE", 100, minimum=1),
                image_models=env_list("IMAGE_MODELS", IMAGE_MODELS),
                video_models=env_list("VIDEO_MODELS", VIDEO_MODELS),
                max_images=_at_most("MAX_IMAGES_PER_JOB", MODEL_MAX_IMAGES, 1),
                max_videos=_at_most("MAX_VIDEOS_PER_JOB", MODEL_MAX_VIDEOS, 1),
                max_video_seconds=_at_most(
                    "MAX_VIDEO_SECONDS", MODEL_VIDEO_SECONDS[1], MODEL_VIDEO_SECONDS[0]
                ),
                rate_limit_per_minute=env_int("RATE_LIMIT_PER_MINUTE", 0, minimum=0),
                rate_limit_burst=env_int("RATE_LIMIT_BURST", 0, minimum=0),
                max_active_jobs_per_user=env_int("MAX_ACTIVE_JOBS_PER_USER", 0, minimum=0),
            ),
            db_pool_size=env_int("DB_POOL_SIZE", 16, minimum=1),
            migrate_on_start=env_bool("MIGRATE_ON_START", True),
            max_attempts=env_int("MAX_ATTEMPTS", 3, minimum=1),
            presign_ttl_seconds=env_int("PRESIGN_TTL_SECONDS", 3600, minimum=1),
            outbox_batch=env_int("OUTBOX_BATCH", 256, minimum=1),
            outbox_poll_seconds=env_float("OUTBOX_POLL_SECONDS", 1.0),
            metrics_sample_seconds=env_float("METRICS_SAMPLE_SECONDS", 5.0),
        )
