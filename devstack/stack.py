"""A whole local stack: dependencies, the three services, a signing secret and a demo user's
token. Both `up` (through its supervisor) and `run` start one of these."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from devstack.deps import Dependencies, start_dependencies
from devstack.services import Services, start_services
from devstack.state import RunDir
from services.common.auth import mint_token

log = logging.getLogger(__name__)

DEMO_SUBJECT = "demo-user"
DEMO_TOKEN_TTL_SECONDS = 7 * 24 * 3600


@dataclass
class Stack:
    deps: Dependencies
    services: Services
    demo_token: str

    def client_env(self) -> dict[str, str]:
        """What mediactl, tests and the benchmark need: addresses, the demo token, and where the
        dependencies are."""
        return {
            **self.services.env(),
            "MEDIA_TOKEN": self.demo_token,
            "DATABASE_URL": self.deps.database_url,
            "NATS_URL": self.deps.nats_url,
            "S3_ENDPOINT_URL": self.deps.s3_endpoint_url,
            "S3_BUCKET": "media",
        }

    def stop(self) -> None:
        started = time.monotonic()
        try:
            self.services.stop()
        finally:
            self.deps.stop()
        log.info("stack stopped in %.2f s", time.monotonic() - started)


def start_stack(run: RunDir, *, workers: int = 1) -> Stack:
    """A fresh stack in `run` (previous data and service logs are discarded)."""
    started = time.monotonic()
    run.ensure()
    shutil.rmtree(run.log_dir, ignore_errors=True)
    secret = run.new_secret()
    deps = start_dependencies(run.path)
    try:
        services = start_services(run.path, deps, secret, workers=workers)
    except BaseException:
        deps.stop()
        raise
    token = mint_token(
        secret,
        DEMO_SUBJECT,
        audience=os.environ.get("AUTH_AUDIENCE", "").strip() or "media",
        issuer=os.environ.get("AUTH_ISSUER", "").strip(),
        ttl_seconds=DEMO_TOKEN_TTL_SECONDS,
    )
    log.info("stack ready in %.2f s (logs: %s)", time.monotonic() - started, run.log_dir)
    return Stack(deps=deps, services=services, demo_token=token)
