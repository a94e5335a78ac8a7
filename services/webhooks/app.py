"""Wires the webhook sender together: the database (a SQL bulkhead of its own), NATS (the stream
of events waiting for the sender, and its durable consumer), job_service's JobReaderService (fresh
output URLs), the HTTP client, the fan-out, the dispatcher and its poll, the gauges, and a gRPC
server for health (ready while NATS and the database answer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client

from services.common import jetstream
from services.common.job_reader import JobReader, job_service_channel
from services.common.metrics import serve_metrics
from services.common.server import ServiceHost, install_blocking_pool, wait_for_signal
from services.common.tasks import every
from services.webhooks import metrics
from services.webhooks.delivery_store import DatabaseProbe, DeliveryStore
from services.webhooks.dispatcher import Dispatcher
from services.webhooks.fanout import Fanout, ensure_consumer
from services.webhooks.http import Sender
from services.webhooks.recorder import Recorder
from services.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

GAUGE_SECONDS = 5.0
READ_CONCURRENCY = 4  # ReadJobs calls in flight at once


class WebhookSender:
    """Everything but the gRPC health server and signals: start, then stop."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.store = DeliveryStore.open(
            settings.database_url,
            settings.db_pool_size,
            settings.db_call_timeout_seconds,
            settings.sealer,
        )
        self.probe = DatabaseProbe(settings.database_url, settings.db_call_timeout_seconds)
        self._channel = job_service_channel(
            settings.job_service_addr, settings.server.max_message_bytes, settings.server.tls
        )
        self.sender = Sender(
            settings.url_policy,
            timeout_seconds=settings.timeout_seconds,
            response_max_bytes=settings.response_max_bytes,
            max_connections=settings.max_in_flight,
        )
        reader = JobReader(
            self._channel,
            settings.token,
            timeout_seconds=settings.job_read_timeout_seconds,
            concurrency=READ_CONCURRENCY,
        )
        recorder = Recorder(self.store.engine, self.store.bulkhead)
        self.dispatcher = Dispatcher(self.store, recorder, self.sender, reader, settings)
        self.nc: Client | None = None
        self._fanout: Fanout | None = None
        self._gauges: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.nc = await jetstream.connect(self.settings.nats_url, "webhooks")
        js = self.nc.jetstream()
        await jetstream.ensure_streams(js)
        retention = self.settings.events_retention_seconds
        await ensure_consumer(js, events_max_age_seconds=retention)
        self.dispatcher.run()
        self._fanout = Fanout(js, self.store, self.dispatcher, events_max_age_seconds=retention)
        self._fanout.start()
        self._gauges = asyncio.create_task(
            every(GAUGE_SECONDS, self._sample, "webhook gauges", log), name="gauges"
        )

    async def _sample(self) -> None:
        retries, oldest = await self.store.gauges()
        metrics.RETRIES_PENDING.set(retries)
        metrics.OLDEST_DUE.set(oldest)

    async def nats_ok(self) -> bool:
        return self.nc is not None and bool(self.nc.is_connected)

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        if self._fanout is not None:
            await self._fanout.stop()
        await self.dispatcher.stop(self.settings.server.shutdown_grace_seconds)
        await self.sender.close()
        if self.nc is not None and not self.nc.is_closed:
            # Flush so the acks and naks just sent reach the server (not drain(): see the
            # worker, pull subscriptions never finish draining).
            try:
                await jetstream.flush(self.nc, 5)
            except Exception as exc:
                log.warning("nats flush failed: %r", exc)
            await self.nc.close()
        await self._channel.close(grace=None)
        self.store.close()
        self.probe.close()


async def serve(settings: WebhookSettings) -> None:
    install_blocking_pool(settings.server.blocking_threads)
    serve_metrics(settings.server.metrics)
    app = WebhookSender(settings)
    host = ServiceHost("webhooks", settings.server)
    host.add_check("nats", app.nats_ok)
    host.add_check("postgres", app.probe)
    try:
        await app.start()
        await host.start()
        await wait_for_signal()
        await host.set_serving(False)
    finally:
        await app.stop()
        await host.stop()
    log.info("webhook sender stopped")
