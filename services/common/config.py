"""Reading settings from the environment.

Each service declares one frozen dataclass of settings and builds it with `from_env`; the README
documents every variable. Fields shared by all services live in `CommonSettings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class SettingsError(ValueError):
    """A setting is missing or malformed."""


def env_str(name: str, default: str = "") -> str:
    """The variable's value; an empty or blank value counts as unset."""
    return os.environ.get(name, "").strip() or default


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class AuthSettings:
    """How bearer tokens are verified (HS256 with a shared secret)."""

    jwt_secret: str
    audience: str
    issuer: str

    @classmethod
    def from_env(cls) -> AuthSettings:
        secret = env_str("AUTH_JWT_SECRET")
        if len(secret) < 32:
            raise SettingsError("AUTH_JWT_SECRET must be set to at least 32 characters")
        return cls(
            jwt_secret=secret,
            audience=env_str("AUTH_AUDIENCE", "media"),
            issuer=env_str("AUTH_ISSUER", ""),
        )


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str  # empty means AWS
    public_endpoint_url: str  # the host clients use for presigned URLs; empty means endpoint_url
    bucket: str
    region: str
    create_bucket: bool

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = env_str("S3_ENDPOINT_URL")
        return cls(
            endpoint_url=endpoint,
            public_endpoint_url=env_str("S3_PUBLIC_ENDPOINT_URL", endpoint),
            bucket=env_str("S3_BUCKET", "media"),
            region=env_str("S3_REGION", env_str("AWS_REGION", "us-east-1")),
            create_bucket=env_bool("S3_CREATE_BUCKET", False),
        )


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC server every service runs."""

    listen_addr: str
    max_message_bytes: int
    blocking_threads: int
    shutdown_grace_seconds: float

    @classmethod
    def from_env(cls, default_port: int) -> ServerSettings:
        return cls(
            listen_addr=env_str("LISTEN_ADDR", f"[::]:{default_port}"),
            max_message_bytes=env_int("GRPC_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024),
            blocking_threads=env_int("BLOCKING_THREADS", 16, minimum=1),
            shutdown_grace_seconds=env_float("SHUTDOWN_GRACE_SECONDS", 20.0),
        )
