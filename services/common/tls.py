"""gRPC credentials from TlsSettings, the one place servers and clients get them.

Files are read when the credentials are built (at start-up), so a missing or unreadable file
stops the process at once instead of failing every handshake later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import grpc

from services.common.config import SettingsError, TlsSettings

# A channel argument: gRPC takes integer and string values.
ChannelOption: TypeAlias = tuple[str, str | int]


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{setting} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise SettingsError(f"{setting} {path} is empty")
    return data


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """None for plaintext; with client_ca_file, callers without a certificate signed by it are
    refused during the handshake (mutual TLS)."""
    if not tls.server_enabled:
        return None
    pair = (_read(tls.key_file, "TLS_KEY_FILE"), _read(tls.cert_file, "TLS_CERT_FILE"))
    client_ca = _read(tls.client_ca_file, "TLS_CLIENT_CA_FILE") if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """None for plaintext; otherwise trusting ca_file (or the system's roots) and presenting the
    client certificate when one is configured."""
    if not tls.client_enabled:
        return None
    roots = _read(tls.ca_file, "TLS_CA_FILE") if tls.ca_file else None
    key = cert = None
    if tls.client_cert_file:
        key = _read(tls.client_key_file, "TLS_CLIENT_KEY_FILE")
        cert = _read(tls.client_cert_file, "TLS_CLIENT_CERT_FILE")
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=cert
    )


def _options(tls: TlsSettings, options: Sequence[ChannelOption]) -> list[ChannelOption]:
    merged = list(options)
    if tls.client_enabled and tls.server_name:
        merged.append(("grpc.ssl_target_name_override", tls.server_name))
    return merged


def aio_channel(
    addr: str,
    tls: TlsSettings,
    *,
    options: Sequence[ChannelOption] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.aio.insecure_channel(addr, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        addr, credentials, options=_options(tls, options), interceptors=interceptors
    )


def sync_channel(
    addr: str, tls: TlsSettings, *, options: Sequence[ChannelOption] = ()
) -> grpc.Channel:
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.insecure_channel(addr, options=list(options))
    return grpc.secure_channel(addr, credentials, options=_options(tls, options))


def add_port(server: grpc.aio.Server, addr: str, tls: TlsSettings) -> int:
    """Binds `addr` on the server, with TLS when certificates are configured."""
    credentials = server_credentials(tls)
    if credentials is None:
        return server.add_insecure_port(addr)
    return server.add_secure_port(addr, credentials)
