"""A whole stack whose worker generates with Google's models through the local fake.

It has its own Postgres, NATS and S3: sharing the session's NATS would put its jobs on the same
dispatch stream and durable consumers as the local-generator stack, so either stack's worker could
take the other's jobs. Only the worker gets the Google settings (and so the API key).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.deps import Dependencies, start_dependencies
from devstack.services import ServiceProcess, Services, start_services


def google_worker_env(fake_url: str, api_key: str, **overrides: str) -> dict[str, str]:
    """A worker on Vertex AI express mode (so Gemini, Imagen and Veo are all served), pointed at
    the fake, with retry, poll and redelivery delays short enough for tests."""
    env = {
        "GENERATOR": "google",
        "GEMINI_API_KEY": api_key,
        "GOOGLE_API_KEY": "",  # the SDK prefers it over GEMINI_API_KEY: keep ours in charge
        "GOOGLE_CLOUD_PROJECT": "",  # a project would switch Vertex AI from express mode to ADC
        "GOOGLE_CLOUD_LOCATION": "",
        "GOOGLE_GENAI_USE_VERTEXAI": "true",
        "GOOGLE_GEMINI_BASE_URL": fake_url,
        "GOOGLE_VERTEX_BASE_URL": fake_url,
        "GOOGLE_API_TIMEOUT_SECONDS": "30",
        "GOOGLE_API_RETRY_ATTEMPTS": "3",
        "GOOGLE_API_RETRY_BASE_DELAY_SECONDS": "0.02",
        "GOOGLE_API_RETRY_MAX_DELAY_SECONDS": "0.1",
        "VIDEO_POLL_INITIAL_SECONDS": "0.05",
        "VIDEO_POLL_MAX_SECONDS": "0.2",
        "VIDEO_DEADLINE_SECONDS": "30",
        "RETRY_BASE_DELAY_SECONDS": "0.1",
        "RETRY_MAX_DELAY_SECONDS": "0.5",
        "PROGRESS_INTERVAL_SECONDS": "0.05",
    }
    env.update(overrides)
    return env


@dataclass
class GoogleStack:
    run_dir: Path
    deps: Dependencies
    services: Services
    secret: str

    @property
    def worker(self) -> ServiceProcess:
        return self.services.workers[-1]

    def replace_worker(self, worker_env: Mapping[str, str]) -> ServiceProcess:
        """Stops the current worker(s) and starts one with `worker_env` (e.g. another
        WORKER_CONCURRENCY); returns once the new one is healthy."""
        for old in self.services.workers:
            old.stop()
        self.services.workers.clear()
        return self.services.add_worker(worker_env)

    def log_files(self) -> list[Path]:
        """Every log the stack wrote: services and dependencies."""
        return sorted(self.run_dir.rglob("*.log"))

    def stop(self) -> None:
        try:
            self.services.stop()
        finally:
            self.deps.stop()


def start_google_stack(
    run_dir: Path,
    worker_env: Mapping[str, str],
    *,
    job_env: Mapping[str, str] | None = None,
) -> GoogleStack:
    """Dependencies of its own (never the environment's), job_service and notifier with
    `job_env`, and one worker with `worker_env` on top."""
    deps = start_dependencies(run_dir / "deps", use_env=False)
    try:
        secret = secrets.token_urlsafe(32)
        services = start_services(run_dir / "services", deps, secret, workers=0, extra_env=job_env)
        try:
            services.add_worker(worker_env)
        except BaseException:
            services.stop(5)
            raise
    except BaseException:
        deps.stop()
        raise
    return GoogleStack(run_dir=run_dir, deps=deps, services=services, secret=secret)
