"""The media worker's settings, read once from the environment."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from services.common.config import (
    S3Settings,
    ServerSettings,
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_required,
    env_str,
    max_input_image_bytes,
)
from services.common.lifecycle import KINDS

GENERATORS = ("local", "google")
# Any of these switches the worker to Google when GENERATOR=auto (the SDK's own variables).
GOOGLE_CREDENTIAL_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
GOOGLE_VERTEX_VAR = "GOOGLE_GENAI_USE_VERTEXAI"


def resolve_generator(choice: str) -> str:
    """auto means google when Google credentials are configured, else the local generator."""
    choice = choice.lower() or "auto"
    if choice in GENERATORS:
        return choice
    if choice != "auto":
        raise SettingsError(f"GENERATOR must be auto, local or google, got {choice!r}")
    if any(os.environ.get(name, "").strip() for name in GOOGLE_CREDENTIAL_VARS):
        return "google"
    if env_bool(GOOGLE_VERTEX_VAR, False):
        return "google"
    return "local"


@dataclass(frozen=True)
class WorkerSettings:
    nats_url: str
    job_service_addr: str
    worker_token: str
    s3: S3Settings
    server: ServerSettings  # its shutdown_grace_seconds: how long jobs in flight get on SIGTERM
    kinds: tuple[str, ...]
    concurrency: int  # jobs in flight per process, shared by every kind
    ack_wait_seconds: float  # JetStream redelivers a message not acked or kept alive by then
    generator: str  # "local" or "google" (auto already resolved)
    default_image_model: str
    default_video_model: str
    upload_attempts: int
    retry_base_delay_seconds: float  # first nak delay; doubles per attempt
    retry_max_delay_seconds: float
    rpc_timeout_seconds: float  # deadline of one WorkerService call
    rpc_attempts: int  # tries of one WorkerService call while job_service is UNAVAILABLE
    complete_attempts: int  # tries of CompleteJob: outputs are already stored, so try harder
    progress_interval_seconds: float  # at most one ReportProgress per interval
    fetch_timeout_seconds: float  # long-poll of one JetStream fetch
    max_input_image_bytes: int  # the input image a job may carry (job_service's limit too)
    work_dir: str  # where per-job temporary directories are made
    local_video_long_side: int  # local generator: 1280 gives 1280x720 / 720x1280
    local_video_preset: str  # local generator: x264 preset (speed against file size)

    @classmethod
    def from_env(cls) -> WorkerSettings:
        token = env_required("WORKER_TOKEN", "a JWT with the worker role")
        kinds = env_list("WORKER_KINDS", KINDS)
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise SettingsError(f"WORKER_KINDS must be a subset of {','.join(KINDS)}, got {kinds}")
        ack_wait = env_float("ACK_WAIT_SECONDS", 30.0)
        if ack_wait < 3:
            raise SettingsError("ACK_WAIT_SECONDS must be at least 3")
        return cls(
            nats_url=env_str("NATS_URL", "nats://127.0.0.1:4222"),
            job_service_addr=env_str("JOB_SERVICE_ADDR", "127.0.0.1:50051"),
            worker_token=token,
            s3=S3Settings.from_env(),
            # One grace for everything in flight at SIGTERM, jobs and health calls alike. A job
            # outlasts a call, so a worker waits longer by default than a server (20 s).
            server=ServerSettings.from_env(default_port=50053, default_grace_seconds=25.0),
            kinds=tuple(dict.fromkeys(kinds)),
            concurrency=env_int("WORKER_CONCURRENCY", 4, minimum=1),
            ack_wait_seconds=ack_wait,
            generator=resolve_generator(env_str("GENERATOR", "auto")),
            default_image_model=env_str("DEFAULT_IMAGE_MODEL", "gemini-2.5-flash-image"),
            default_video_model=env_str("DEFAULT_VIDEO_MODEL", "veo-3.1-generate-preview"),
            upload_attempts=env_int("UPLOAD_ATTEMPTS", 4, minimum=1),
            retry_base_delay_seconds=env_float("RETRY_BASE_DELAY_SECONDS", 2.0),
            retry_max_delay_seconds=env_float("RETRY_MAX_DELAY_SECONDS", 60.0),
            rpc_timeout_seconds=env_float("RPC_TIMEOUT_SECONDS", 10.0),
            rpc_attempts=env_int("RPC_ATTEMPTS", 4, minimum=1),
            complete_attempts=env_int("COMPLETE_ATTEMPTS", 8, minimum=1),
            progress_interval_seconds=env_float("PROGRESS_INTERVAL_SECONDS", 0.25),
            fetch_timeout_seconds=env_float("FETCH_TIMEOUT_SECONDS", 2.0),
            max_input_image_bytes=max_input_image_bytes(),
            work_dir=env_str("WORK_DIR", tempfile.gettempdir()),
            local_video_long_side=env_int("LOCAL_VIDEO_LONG_SIDE", 1280, minimum=64),
            local_video_preset=env_str("LOCAL_VIDEO_PRESET", "ultrafast"),
        )
