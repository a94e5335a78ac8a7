"""The one way a process opens its channel to job_service (the worker's WorkerService calls, the
notifier's GetJob reads): TLS as configured, trace propagation, message size, quick reconnect."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from services.common import tracing
from services.common.config import TlsSettings
from services.common.server import channel_options
from services.common.tls import ChannelOption, aio_channel

# gRPC's reconnect backoff grows to 2 minutes; capped, calls succeed again soon after job_service
# comes back (a restart, a rolling deploy).
MAX_RECONNECT_BACKOFF_MS = 2000


def job_service_channel(
    addr: str,
    tls: TlsSettings,
    *,
    max_message_bytes: int,
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """`options` adds channel arguments of the caller's own (e.g. a retry service config)."""
    return aio_channel(
        addr,
        tls,
        options=[
            *channel_options(max_message_bytes),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            *options,
        ],
        interceptors=tracing.client_interceptors(),
    )
