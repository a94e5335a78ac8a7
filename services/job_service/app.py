"""Wires job_service together: settings -> database, S3, NATS, outbox relay, metrics sampler,
gRPC server (ready while Postgres and NATS answer)."""

from __future__ import annotations

import asyncio
import logging

from media.v1 import job_service_pb2_grpc, worker_service_pb2_grpc
from services.common import jetstream
from services.common.auth import TokenVerifier
from services.common.metrics import serve_metrics
from services.common.s3 import ensure_bucket, make_client
from services.common.server import ServiceHost, install_blocking_pool, wait_for_signal
from services.job_service import migrate
from services.job_service.api import JobApi
from services.job_service.database import make_engine
from services.job_service.outbox import OutboxRelay
from services.job_service.sampler import Sampler, monitor_engine
from services.job_service.settings import JobServiceSettings
from services.job_service.store import Store
from services.job_service.urls import UrlSigner
from services.job_service.worker_api import WorkerApi

log = logging.getLogger(__name__)


async def serve(settings: JobServiceSettings) -> None:
    install_blocking_pool(settings.server.blocking_threads)
    serve_metrics(settings.server.metrics)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
    engine = make_engine(settings.database_url, settings.db_pool_size)
    s3 = make_client(settings.s3)
    if settings.s3.create_bucket:
        await asyncio.to_thread(ensure_bucket, s3, settings.s3.bucket)
    nc = await jetstream.connect(settings.nats_url, "job_service")
    js = nc.jetstream()
    await jetstream.ensure_streams(js)

    # The store wakes the relay after each commit (late-bound: relay is assigned next).
    store = Store(
        engine,
        max_attempts=settings.max_attempts,
        on_commit=lambda rows: relay.notify(rows),
        max_active_per_owner=settings.limits.max_active_jobs_per_user,
    )
    relay = OutboxRelay(
        engine, js, batch=settings.outbox_batch, poll_seconds=settings.outbox_poll_seconds
    )
    verifier = TokenVerifier(settings.auth)
    signer = UrlSigner(make_client(settings.s3, public=True), settings.presign_ttl_seconds)

    # Gauges and the Postgres readiness check, on a connection of their own.
    sampler = Sampler(
        monitor_engine(settings.database_url),
        nc,
        interval_seconds=settings.metrics_sample_seconds,
        published_ids=lambda: relay.published_ids,
    )

    host = ServiceHost("job_service", settings.server)
    host.add_check("postgres", sampler.postgres_ok)
    host.add_check("nats", sampler.nats_ok)
    host.add(
        "media.v1.JobService",
        job_service_pb2_grpc.add_JobServiceServicer_to_server,
        JobApi(store, verifier, signer, settings.limits, s3, settings.s3.bucket),
    )
    host.add(
        "media.v1.WorkerService",
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
        WorkerApi(store, verifier, settings.s3.bucket),
    )
    relay.start()
    sampler.start()
    await host.start()
    try:
        await wait_for_signal()
    finally:
        await host.stop()
        await relay.stop()
        await sampler.stop()
        await nc.drain()
        engine.dispose()
