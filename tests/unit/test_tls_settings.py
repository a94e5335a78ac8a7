import grpc
import pytest

from services.common.config import ServerSettings, SettingsError, TlsSettings
from services.common.tls import channel_credentials, server_credentials


def test_no_tls_settings_mean_plaintext() -> None:
    tls = TlsSettings.from_env({})
    assert not tls.server_enabled and not tls.client_enabled
    assert server_credentials(tls) is None and channel_credentials(tls) is None


@pytest.mark.parametrize(
    "env",
    [
        {"TLS_CERT_FILE": "/c.pem"},  # no key
        {"TLS_KEY_FILE": "/k.pem"},
        {"TLS_CLIENT_CERT_FILE": "/c.pem"},
        {"TLS_CLIENT_CA_FILE": "/ca.pem"},  # mutual TLS without a server certificate
        {"TLS_ENABLED": "maybe"},
    ],
)
def test_incomplete_tls_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        TlsSettings.from_env(env)


def test_client_tls_is_on_with_a_ca_a_client_certificate_or_the_flag() -> None:
    assert TlsSettings.from_env({"TLS_CA_FILE": "/ca.pem"}).client_enabled
    assert TlsSettings.from_env({"TLS_ENABLED": "true"}).client_enabled
    assert isinstance(
        channel_credentials(TlsSettings.from_env({"TLS_ENABLED": "1"})), grpc.ChannelCredentials
    )


def test_unreadable_certificate_files_stop_start_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = str(tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(SettingsError, match="TLS_KEY_FILE"):
        server_credentials(TlsSettings(cert_file=missing, key_file=missing))
    with pytest.raises(SettingsError, match="TLS_CA_FILE"):
        channel_credentials(TlsSettings(ca_file=str(empty)))


def test_server_settings_read_tls_from_the_environment(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TLS_CERT_FILE", str(tmp_path / "c.pem"))
    monkeypatch.setenv("TLS_KEY_FILE", str(tmp_path / "k.pem"))
    assert ServerSettings.from_env(default_port=1).tls.server_enabled
