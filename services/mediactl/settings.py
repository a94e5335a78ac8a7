"""mediactl's settings: the one place the CLI reads its environment (its flags override them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import DEFAULT_MAX_MESSAGE_BYTES, TlsSettings, env_int, env_str

JOB_SERVICE_ENV = "JOB_SERVICE_ADDR"
NOTIFIER_ENV = "NOTIFIER_ADDR"
TOKEN_ENV = "MEDIA_TOKEN"
TOKEN_FILE_ENV = "MEDIA_TOKEN_FILE"  # read again when a stream's token expires
SECRET_ENV = "AUTH_JWT_SECRET"  # where `mediactl token` finds the signing secret by default
WEBHOOK_SECRET_ENV = "MEDIACTL_WEBHOOK_SECRET"  # `webhooks listen` checks signatures with it


@dataclass(frozen=True)
class CliSettings:
    job_addr: str
    notifier_addr: str
    token: str = field(repr=False)
    token_file: str
    max_message_bytes: int  # the services' GRPC_MAX_MESSAGE_BYTES
    tls: TlsSettings
    audience: str  # of the tokens `mediactl token` mints
    issuer: str

    @classmethod
    def from_env(cls) -> CliSettings:
        """Raises SettingsError for a malformed value."""
        return cls(
            job_addr=env_str(JOB_SERVICE_ENV),
            notifier_addr=env_str(NOTIFIER_ENV),
            token=env_str(TOKEN_ENV),
            token_file=env_str(TOKEN_FILE_ENV),
            max_message_bytes=env_int(
                "GRPC_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024
            ),
            tls=TlsSettings.from_env(),
            audience=env_str("AUTH_AUDIENCE", "media"),
            issuer=env_str("AUTH_ISSUER"),
        )


def signing_secret(variable: str) -> str:
    """The value of the variable `mediactl token --secret-env` names: the secret is read from the
    environment, never from argv, so it stays out of `ps` and the shell's history."""
    return env_str(variable)


def webhook_secret() -> str:
    """The secret `webhooks listen` uses when --secret is left off."""
    return env_str(WEBHOOK_SECRET_ENV)
