"""`python -m services.notifier`: serves NotifierService (WatchJob, WatchJobs) from JetStream
status events, reading jobs from job_service's JobReaderService with its own credential."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client

from media.v1 import notifier_service_pb2_grpc
from services.common import jetstream
from services.common.auth import TokenVerifier
from services.common.config import LogSettings, load_or_exit
from services.common.job_reader import JobReader, job_service_channel, job_service_reachable
from services.common.logs import configure_logging
from services.common.metrics import serve_metrics
from services.common.server import ServiceHost, install_blocking_pool, wait_for_signal
from services.common.tracing import setup_tracing
from services.notifier.hub import EventHub
from services.notifier.jobs import JobCache
from services.notifier.limits import StreamLimits
from services.notifier.replay import Replayer
from services.notifier.servicer import SERVICE_NAME, NotifierService
from services.notifier.settings import NotifierSettings

log = logging.getLogger("services.notifier")


async def serve(settings: NotifierSettings) -> None:
    install_blocking_pool(settings.server.blocking_threads)
    serve_metrics(settings.server.metrics)
    channel = job_service_channel(
        settings.job_service_addr, settings.server.max_message_bytes, settings.server.tls
    )
    nc = await jetstream.connect(settings.nats_url, "notifier")
    cache = JobCache(
        JobReader(
            channel,
            settings.token,
            timeout_seconds=settings.read_timeout_seconds,
            concurrency=settings.read_concurrency,
            unavailable="job service is unavailable; watch again with the last cursor",
        ),
        batch=settings.read_batch,
    )
    try:
        js = nc.jetstream()
        # The feed's retention is the events stream's max age: set here, and only here.
        await jetstream.ensure_streams(js, events_max_age_seconds=settings.feed_retention_seconds)
        hub = EventHub(
            js,
            queue_size=settings.watcher_queue_size,
            idle_heartbeat_seconds=settings.idle_heartbeat_seconds,
            observer=cache,
        )
        await hub.start()
        servicer = NotifierService(
            hub,
            cache,
            Replayer(js),
            TokenVerifier(settings.auth),
            StreamLimits(per_user=settings.max_streams_per_user, total=settings.max_streams),
            heartbeat_seconds=settings.heartbeat_seconds,
        )
        host = ServiceHost("notifier", settings.server)
        host.add_check("nats", lambda: _connected(nc))
        host.add_check("job_service", lambda: job_service_reachable(channel))
        host.add(
            SERVICE_NAME, notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server, servicer
        )
        await host.start()
        await wait_for_signal()
        # Readiness goes false first; then open watches end with UNAVAILABLE so their clients
        # reconnect to another replica (with their cursors) instead of waiting out the grace.
        await host.set_serving(False)
        hub.close()
        await host.stop()
        await hub.stop()
    finally:
        await cache.close()
        await nc.drain()
        await channel.close(grace=None)
    log.info("notifier stopped")


async def _connected(nc: Client) -> bool:
    return bool(nc.is_connected)


def main() -> None:
    configure_logging("notifier", LogSettings.from_env().level)
    settings = load_or_exit(NotifierSettings.from_env, log)
    setup_tracing("notifier", settings.server.tracing)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
