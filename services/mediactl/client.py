"""Where the services are, how to reach them, and how their errors read."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import cast

import grpc

from services.common.auth import bearer_metadata
from services.common.config import SettingsError, TlsSettings, env_int
from services.common.errors import field_violations
from services.common.server import channel_options
from services.common.tls import sync_channel

JOB_SERVICE_ENV = "JOB_SERVICE_ADDR"
NOTIFIER_ENV = "NOTIFIER_ADDR"
TOKEN_ENV = "MEDIA_TOKEN"

# UNAVAILABLE means the call never reached a handler or the connection broke, so a retry is safe
# for reads, and for CreateJob because its request_id makes a repeat return the first job.
# CancelJob is left out: a lost response followed by a retry would report FAILED_PRECONDITION.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "media.v1.JobService", "method": method}
                    for method in ("CreateJob", "GetJob", "ListJobs")
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class ConfigError(Exception):
    """A setting the command needs is missing (shown without a traceback)."""


@dataclass(frozen=True)
class Connection:
    """Addresses and credentials from flags, falling back to the environment."""

    job_addr: str
    notifier_addr: str
    token: str
    timeout: float  # deadline of each unary call, in seconds
    tls: bool

    @classmethod
    def resolve(
        cls,
        *,
        addr: str | None,
        notifier_addr: str | None,
        token: str | None,
        timeout: float,
        tls: bool,
    ) -> Connection:
        return cls(
            job_addr=(addr or os.environ.get(JOB_SERVICE_ENV, "")).strip(),
            notifier_addr=(notifier_addr or os.environ.get(NOTIFIER_ENV, "")).strip(),
            token=(token or os.environ.get(TOKEN_ENV, "")).strip(),
            timeout=timeout,
            tls=tls,
        )

    def require_job_service(self) -> str:
        if not self.job_addr:
            raise ConfigError(f"no job service address: set {JOB_SERVICE_ENV} or pass --addr")
        return self.job_addr

    def require_notifier(self) -> str:
        if not self.notifier_addr:
            raise ConfigError(f"no notifier address: set {NOTIFIER_ENV} or pass --notifier-addr")
        return self.notifier_addr

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.token:
            raise ConfigError(f"no token: set {TOKEN_ENV} or pass --token (see `mediactl token`)")
        return bearer_metadata(self.token)

    def channel(self, addr: str) -> grpc.Channel:
        options = [
            *channel_options(env_int("GRPC_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024)),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.primary_user_agent", "mediactl"),
        ]
        try:
            settings = TlsSettings.from_env()
        except SettingsError as exc:
            raise ConfigError(str(exc)) from None
        # --tls turns TLS on with the system's roots; TLS_CA_FILE and TLS_CLIENT_CERT_FILE /
        # TLS_CLIENT_KEY_FILE (mutual TLS) imply it.
        settings = dataclasses.replace(settings, enabled=settings.enabled or self.tls)
        try:
            return sync_channel(addr, settings, options=options)
        except SettingsError as exc:  # an unreadable certificate file
            raise ConfigError(str(exc)) from None


def describe_rpc_error(error: grpc.RpcError) -> list[str]:
    """`error: <CODE>: <message>`, then one indented line per BadRequest field violation."""
    call = cast(grpc.Call, error)
    lines = [f"error: {call.code().name}: {call.details() or ''}"]
    try:
        violations = field_violations(error)
    except ValueError:  # details that contradict the status: show the status alone
        violations = []
    lines += [f"  {field}: {description}" for field, description in violations]
    return lines
