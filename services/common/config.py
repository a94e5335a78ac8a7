"""Reading settings from the environment.

Each service declares one frozen dataclass of settings and builds it with `from_env`; the README
documents every variable. Fields shared by all services live in `CommonSettings`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from services.common.sealing import Sealer
from services.common.webhook_urls import UrlPolicy

_T = TypeVar("_T")


class SettingsError(ValueError):
    """A setting is missing or malformed."""


def load_or_exit(load: Callable[[], _T], log: logging.Logger) -> _T:
    """What `load` returns. A SettingsError it raises is logged as bad settings and ends the
    process with exit status 2: a service does not start on settings it cannot read."""
    try:
        return load()
    except SettingsError as exc:
        log.error("bad settings: %s", exc)
        sys.exit(2)


def env_str(name: str, default: str = "") -> str:
    """The variable's value; an empty or blank value counts as unset."""
    return os.environ.get(name, "").strip() or default


def env_required(name: str, what: str = "") -> str:
    """The variable's value, which must be set (`what`, if given, says what it holds)."""
    value = env_str(name)
    if not value:
        raise SettingsError(f"{name} must be set" + (f" ({what})" if what else ""))
    return value


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


def env_positive(name: str, default: float) -> float:
    """A number above 0 (a duration, mostly)."""
    value = env_float(name, default)
    if not value > 0:  # also refuses nan
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


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


def webhook_url_policy() -> UrlPolicy:
    """Where webhooks may go: job_service checks it when an endpoint is registered, the sender
    at every delivery, so both read the same two settings."""
    return UrlPolicy(
        allow_http=env_bool("WEBHOOK_ALLOW_HTTP", False),
        allow_private=env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False),
    )


def webhook_sealer() -> Sealer:
    """WEBHOOK_SECRETS_KEYS: the keys webhook signing secrets are sealed with at rest (comma-
    separated Fernet keys, the sealing one first). job_service seals with them and the sender
    opens with them, so both read the same setting."""
    keys = env_list("WEBHOOK_SECRETS_KEYS", ())
    if not keys:
        raise SettingsError(
            "WEBHOOK_SECRETS_KEYS is required: one or more Fernet keys, comma-separated "
            "(make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        )
    try:
        return Sealer(keys)
    except ValueError:
        raise SettingsError(
            "WEBHOOK_SECRETS_KEYS must hold Fernet keys (32 url-safe base64-encoded bytes each)"
        ) from None


def max_input_image_bytes() -> int:
    """MAX_INPUT_IMAGE_BYTES: the largest input image. job_service refuses a larger one in
    CreateJob and the worker will not download a larger one, so both must read the same value."""
    return env_int("MAX_INPUT_IMAGE_BYTES", 10 * 1024 * 1024, minimum=1024)


@dataclass(frozen=True)
class LogSettings:
    """How much every service logs. Read on its own, before the service's settings, so that a bad
    setting there is logged."""

    level: str = "INFO"

    @classmethod
    def from_env(cls) -> LogSettings:
        level = env_str("LOG_LEVEL", "INFO").upper()
        if level not in logging.getLevelNamesMapping():
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR ..., got {level!r}")
        return cls(level=level)


@dataclass(frozen=True)
class AuthSettings:
    """How bearer tokens are verified: HS256 with a shared secret, and/or RS256/ES256 with the
    public keys of a JWKS (a file, or a URL that is cached and refetched for an unknown `kid`).
    At least one of the two is required."""

    jwt_secret: str  # empty: HS256 tokens are refused
    audience: str
    issuer: str
    jwks_file: str = ""
    jwks_url: str = ""
    jwks_cache_seconds: float = 300.0  # refetch the URL's keys after this long
    jwks_min_refresh_seconds: float = 10.0  # at most one fetch per interval, even for unknown kids

    @classmethod
    def from_env(cls) -> AuthSettings:
        secret = env_str("AUTH_JWT_SECRET")
        jwks_file = env_str("AUTH_JWKS_FILE")
        jwks_url = env_str("AUTH_JWKS_URL")
        if jwks_file and jwks_url:
            raise SettingsError("set AUTH_JWKS_FILE or AUTH_JWKS_URL, not both")
        if not (secret or jwks_file or jwks_url):
            raise SettingsError(
                "AUTH_JWT_SECRET (HS256) or AUTH_JWKS_FILE / AUTH_JWKS_URL (RS256, ES256) "
                "must be set"
            )
        if secret and len(secret) < 32:
            raise SettingsError("AUTH_JWT_SECRET must be at least 32 characters")
        if jwks_url and not jwks_url.startswith(("https://", "http://")):
            raise SettingsError(f"AUTH_JWKS_URL must be an http(s) URL, got {jwks_url!r}")
        cache = env_float("AUTH_JWKS_CACHE_SECONDS", 300.0)
        min_refresh = env_float("AUTH_JWKS_MIN_REFRESH_SECONDS", 10.0)
        if cache <= 0 or min_refresh < 0:
            raise SettingsError(
                "AUTH_JWKS_CACHE_SECONDS must be positive and AUTH_JWKS_MIN_REFRESH_SECONDS "
                "not negative"
            )
        return cls(
            jwt_secret=secret,
            audience=env_str("AUTH_AUDIENCE", "media"),
            issuer=env_str("AUTH_ISSUER", ""),
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            jwks_cache_seconds=cache,
            jwks_min_refresh_seconds=min_refresh,
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
class TlsSettings:
    """Certificates for gRPC (services.common.tls builds the credentials). Paths to PEM files;
    all empty means plaintext. One set serves both sides: a process's server uses cert/key (and
    demands client certificates signed by client_ca when set), its channels to other services
    trust ca and present client_cert/client_key when set."""

    cert_file: str = ""  # the server's certificate chain
    key_file: str = ""
    client_ca_file: str = ""  # set: mutual TLS, every caller must present a certificate
    ca_file: str = ""  # roots a client trusts; empty with enabled: the system's roots
    client_cert_file: str = ""  # the certificate a client presents (mutual TLS)
    client_key_file: str = ""
    server_name: str = ""  # the name a client expects in the server's certificate
    enabled: bool = False  # clients connect with TLS (implied by any client-side file)

    @property
    def server_enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def client_enabled(self) -> bool:
        return self.enabled or bool(self.ca_file or self.client_cert_file)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsSettings:
        """From os.environ, or from `env` (the devstack probes a child with the child's env)."""
        source = os.environ if env is None else env

        def get(name: str) -> str:
            return source.get(name, "").strip()

        raw_enabled = get("TLS_ENABLED").lower()
        if raw_enabled not in {"", "1", "true", "yes", "on", "0", "false", "no", "off"}:
            raise SettingsError(f"TLS_ENABLED must be true or false, got {raw_enabled!r}")
        settings = cls(
            cert_file=get("TLS_CERT_FILE"),
            key_file=get("TLS_KEY_FILE"),
            client_ca_file=get("TLS_CLIENT_CA_FILE"),
            ca_file=get("TLS_CA_FILE"),
            client_cert_file=get("TLS_CLIENT_CERT_FILE"),
            client_key_file=get("TLS_CLIENT_KEY_FILE"),
            server_name=get("TLS_SERVER_NAME"),
            enabled=raw_enabled in {"1", "true", "yes", "on"},
        )
        if bool(settings.cert_file) != bool(settings.key_file):
            raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if bool(settings.client_cert_file) != bool(settings.client_key_file):
            raise SettingsError("TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE must be set together")
        if settings.client_ca_file and not settings.cert_file:
            raise SettingsError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return settings


@dataclass(frozen=True)
class MetricsSettings:
    port: int = 9100  # 0: no metrics endpoint
    addr: str = "0.0.0.0"

    @classmethod
    def from_env(cls) -> MetricsSettings:
        return cls(
            port=env_int("METRICS_PORT", 9100, minimum=0),
            addr=env_str("METRICS_ADDR", "0.0.0.0"),
        )


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go (the OpenTelemetry SDK reads the other OTEL_* variables itself)."""

    otlp_endpoint: str = ""  # empty: no export

    @classmethod
    def from_env(cls) -> TracingSettings:
        endpoint = env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env_str(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if env_str("OTEL_SDK_DISABLED").lower() == "true":
            endpoint = ""
        return cls(otlp_endpoint=endpoint)


# GRPC_MAX_MESSAGE_BYTES: gRPC reads a whole message, up to this, before any handler checks its
# token. The largest legitimate one is a CreateJob with an inline image (MAX_INLINE_IMAGE_BYTES,
# 1 MiB) and two prompts of up to 32 KB each; larger images go through CreateInputUpload, and
# ListJobs fills its pages only up to what fits.
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC server every service runs, and what every process has around it."""

    listen_addr: str
    max_message_bytes: int
    blocking_threads: int
    shutdown_grace_seconds: float
    shutdown_drain_seconds: float = 1.0
    tls: TlsSettings = TlsSettings()
    health_listen_addr: str = ""  # plaintext health-only listener, for probes (off when empty)
    readiness_check_seconds: float = 2.0  # how often dependencies are checked
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()

    @classmethod
    def from_env(cls, default_port: int, default_grace_seconds: float = 20.0) -> ServerSettings:
        check_seconds = env_float("READINESS_CHECK_SECONDS", 2.0)
        if check_seconds <= 0:
            raise SettingsError("READINESS_CHECK_SECONDS must be positive")
        return cls(
            listen_addr=env_str("LISTEN_ADDR", f"[::]:{default_port}"),
            max_message_bytes=env_int(
                "GRPC_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024
            ),
            blocking_threads=env_int("BLOCKING_THREADS", 16, minimum=1),
            shutdown_grace_seconds=env_float("SHUTDOWN_GRACE_SECONDS", default_grace_seconds),
            shutdown_drain_seconds=env_float("SHUTDOWN_DRAIN_SECONDS", 1.0),
            tls=TlsSettings.from_env(),
            health_listen_addr=env_str("HEALTH_LISTEN_ADDR", ""),
            readiness_check_seconds=check_seconds,
            metrics=MetricsSettings.from_env(),
            tracing=TracingSettings.from_env(),
        )
