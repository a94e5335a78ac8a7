"""Wiring the worker together: NATS, S3, the WorkerService client, the generator, the consumer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from services.common import jetstream
from services.common.config import SettingsError
from services.common.s3 import ensure_bucket, make_client
from services.media_worker.cancellation import CancellationListener
from services.media_worker.client import WorkerClient
from services.media_worker.consumer import Consumer
from services.media_worker.generators.base import Generator
from services.media_worker.generators.local import LocalGenerator
from services.media_worker.runner import JobRunner
from services.media_worker.settings import WorkerSettings
from services.media_worker.uploader import Storage

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_STARTUP_RETRY_SECONDS = 2.0


def build_generator(settings: WorkerSettings) -> Generator:
    """The local generator, or Google's when GENERATOR resolves to google."""
    if settings.generator != "google":
        return LocalGenerator(
            video_long_side=settings.local_video_long_side,
            video_preset=settings.local_video_preset,
        )
    try:
        # Imported only when used: google-genai is heavy and the local path must not need it.
        from services.media_worker.generators import google
    except ImportError as exc:
        raise SettingsError(
            "GENERATOR resolved to google (Google credentials are set) but the Google generator "
            f"cannot be loaded: {exc}. Set GENERATOR=local to run without it."
        ) from exc
    generator: Generator = google.build_generator(settings)
    return generator


class MediaWorker:
    """Everything but the gRPC health server and signal handling (see __main__)."""

    def __init__(self, settings: WorkerSettings, generator: Generator | None = None) -> None:
        self.settings = settings
        self.generator = generator or build_generator(settings)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._client: WorkerClient | None = None
        self._consumer: Consumer | None = None
        self._s3: S3Client | None = None

    async def start(self) -> None:
        """Connects and starts consuming. Retries until NATS and S3 answer, so the worker can
        start before its dependencies (as pods do); cancel it to give up."""
        settings = self.settings
        self._nc = await self._retry("connect to NATS", self._connect)
        self._js = self._nc.jetstream()
        await self._retry("create streams and consumers", self._ensure)
        # A 16 MiB multipart part can take a while to be acknowledged on a slow link: a longer
        # read timeout than job_service's small calls; Storage retries whole uploads on top.
        self._s3 = s3 = make_client(
            settings.s3, connect_timeout=5.0, read_timeout=60.0, max_attempts=3
        )
        if settings.s3.create_bucket:
            await self._retry(
                "create the bucket",
                lambda: asyncio.to_thread(ensure_bucket, s3, settings.s3.bucket),
            )
        self._client = WorkerClient(
            settings.job_service_addr,
            settings.worker_token,
            timeout_seconds=settings.rpc_timeout_seconds,
            attempts=settings.rpc_attempts,
            max_message_bytes=settings.server.max_message_bytes,
            tls=settings.server.tls,
        )
        storage = Storage(s3, settings.s3.bucket, attempts=settings.upload_attempts)
        runner = JobRunner(
            self._client, self.generator, storage, settings, CancellationListener(self._nc)
        )
        self._consumer = Consumer(
            self._js,
            settings.kinds,
            runner.run,
            self._ensure,
            concurrency=settings.concurrency,
            fetch_timeout_seconds=settings.fetch_timeout_seconds,
        )
        self._consumer.start()
        log.info(
            "media worker consuming",
            extra={
                "kinds": ",".join(settings.kinds),
                "concurrency": settings.concurrency,
                "generator": getattr(self.generator, "name", type(self.generator).__name__),
            },
        )

    # --- readiness checks (see __main__) ----------------------------------------------------

    async def nats_ok(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def job_service_ok(self) -> bool:
        return self._client is not None and await self._client.reachable()

    async def _connect(self) -> Client:
        return await jetstream.connect(self.settings.nats_url, "media_worker")

    async def _ensure(self) -> None:
        assert self._js is not None
        await jetstream.ensure_streams(self._js)
        for kind in self.settings.kinds:
            await jetstream.ensure_worker_consumer(
                self._js,
                kind,
                ack_wait_seconds=self.settings.ack_wait_seconds,
                # Room for every worker's slots; job_service, not JetStream, bounds the work.
                max_ack_pending=10_000,
            )

    async def _retry(self, what: str, step: Callable[[], Awaitable[_T]]) -> _T:
        while True:
            try:
                return await step()
            except Exception as exc:
                log.warning("could not %s yet (%r); retrying", what, exc)
                await asyncio.sleep(_STARTUP_RETRY_SECONDS)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop(self.settings.server.shutdown_grace_seconds)
        if self._client is not None:
            await self._client.close()
        if self._nc is not None and not self._nc.is_closed:
            # Flush so the acks and naks just sent reach the server. Not drain(): it waits on
            # pull subscriptions' queues, which fetch never marks done, until its own timeout.
            try:
                await jetstream.flush(self._nc, 5)
            except Exception as exc:
                log.warning("nats flush failed: %r", exc)
            await self._nc.close()
