"""Wires job_service together: settings -> database, S3, NATS, outbox relay, metrics sampler,
sweeper, gRPC server (ready while Postgres, NATS and S3 answer): JobService, WebhookService and
NotificationService on the public listener, WorkerService and JobReaderService on the internal
one.

Blocking calls run in bulkheads, one per dependency, so that one that hangs holds only its own
threads: SQL in database.py's (DB_POOL_SIZE threads, one per connection), S3 in `s3_bulkhead`
(S3_THREADS); the outbox relay and the metrics sampler each have a connection and a thread of
their own, and so does the S3 readiness probe. The default executor (BLOCKING_THREADS) is left to
CPU work such as decoding input images."""

from __future__ import annotations

import asyncio
import logging

from media.v1 import (
    job_reader_service_pb2_grpc,
    job_service_pb2_grpc,
    notifications_pb2_grpc,
    webhook_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from services.common import jetstream
from services.common.auth import TokenVerifier
from services.common.bulkhead import Bulkhead
from services.common.metrics import serve_metrics
from services.common.resolver import Resolver
from services.common.s3 import BucketProbe, ensure_bucket, make_client
from services.common.server import (
    MAIN_LISTENER,
    ServiceHost,
    install_blocking_pool,
    wait_for_signal,
)
from services.job_service import database, migrate, ratelimit
from services.job_service.api import JobApi
from services.job_service.database import make_engine
from services.job_service.inputs import InputImages, UploadRows
from services.job_service.notification_store import NotificationStore
from services.job_service.notifications_api import NotificationsApi
from services.job_service.outbox import OutboxRelay
from services.job_service.reader_api import JobReaderApi
from services.job_service.sampler import Sampler, monitor_engine
from services.job_service.settings import JobServiceSettings
from services.job_service.store import Store
from services.job_service.sweep_queries import sweeper_engine
from services.job_service.sweeper import Sweeper
from services.job_service.urls import UrlSigner
from services.job_service.webhook_store import WebhookStore
from services.job_service.webhooks_api import WebhooksApi
from services.job_service.worker_api import WorkerApi

log = logging.getLogger(__name__)

WORKER_LISTENER = "worker"


async def serve(settings: JobServiceSettings) -> None:
    install_blocking_pool(settings.server.blocking_threads)
    serve_metrics(settings.server.metrics)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
    db_timeout = settings.db_call_timeout_seconds
    engine = make_engine(
        settings.database_url, settings.db_pool_size, statement_timeout_seconds=db_timeout
    )
    database.use_bulkhead(Bulkhead("sql", settings.db_pool_size, db_timeout))
    s3 = make_client(
        settings.s3,
        max_pool=settings.s3_threads,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
    )
    s3_bulkhead = Bulkhead("s3", settings.s3_threads, settings.s3_call_timeout_seconds)
    if settings.s3.create_bucket:
        await s3_bulkhead.run(ensure_bucket, s3, settings.s3.bucket)
    nc = await jetstream.connect(settings.nats_url, "job_service")
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    # The per-user CreateJob budget lives in NATS so that every replica draws on the same one.
    rate_budget = (
        await ratelimit.open_shared_budget(
            nc, settings.limits.rate_limit_per_minute, settings.limits.rate_limit_burst
        )
        if settings.limits.rate_limit_per_minute
        else None
    )

    # The store wakes the relay after each commit (late-bound: relay is assigned next).
    store = Store(
        engine,
        max_attempts=settings.max_attempts,
        on_commit=lambda rows: relay.notify(rows),
        max_active_per_owner=settings.limits.max_active_jobs_per_user,
    )
    relay_engine = make_engine(
        settings.database_url,
        1,
        statement_timeout_seconds=db_timeout,
        application_name="job_service-outbox",
    )
    relay = OutboxRelay(
        relay_engine,
        js,
        batch=settings.outbox_batch,
        poll_seconds=settings.outbox_poll_seconds,
        thread=Bulkhead("outbox", 1, db_timeout),
    )
    verifier = TokenVerifier(settings.auth)
    public_s3 = make_client(settings.s3, public=True)  # presigns only: never sends a request
    signer = UrlSigner(public_s3, settings.presign_ttl_seconds)
    inputs = InputImages(
        s3,
        settings.s3.bucket,
        public_s3,
        s3_bulkhead,
        UploadRows(engine),
        url_ttl_seconds=settings.upload_url_ttl_seconds,
        max_input_image_bytes=settings.limits.max_input_image_bytes,
    )

    # Gauges and the Postgres readiness check, on a connection of their own.
    sampler = Sampler(
        monitor_engine(settings.database_url),
        nc,
        interval_seconds=settings.metrics_sample_seconds,
        published_ids=lambda: relay.published_ids,
    )
    # Input images of finished jobs and objects no record points to, rows past their retention,
    # webhook secrets another key sealed; one replica at a time, on a connection, S3 connections
    # and threads of its own (bounded calls: a listing page or a DeleteObjects of 1000 keys may
    # take longer than a request's call).
    sweeper = Sweeper(
        sweeper_engine(settings.database_url),
        make_client(settings.s3, max_pool=2, read_timeout=30.0, max_attempts=3),
        settings.s3.bucket,
        settings.sweep,
        settings.webhooks.sealer,
    )

    # A cap on calls in flight (MAX_CONCURRENT_RPCS) bounds, with GRPC_MAX_MESSAGE_BYTES, the
    # memory callers can take before any token is checked.
    host = ServiceHost(
        "job_service",
        settings.server,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    host.add_check("postgres", sampler.postgres_ok)
    host.add_check("nats", sampler.nats_ok)
    s3_probe = BucketProbe(settings.s3, settings.server.readiness_check_seconds)
    host.add_check("s3", s3_probe)
    # Webhook hosts, resolved at registration.
    dns = Resolver()
    host.add(
        "media.v1.JobService",
        job_service_pb2_grpc.add_JobServiceServicer_to_server,
        JobApi(
            store,
            verifier,
            signer,
            settings.limits,
            inputs,
            rate_budget=rate_budget,
            webhooks=settings.webhooks,
            dns=dns,
        ),
    )
    # The caller's webhook endpoints and inbox, beside JobService: the same clients.
    webhook_store = WebhookStore(
        engine,
        max_endpoints=settings.webhooks.max_endpoints_per_user,
        overlap_seconds=settings.webhooks.secret_overlap_seconds,
    )
    host.add(
        "media.v1.WebhookService",
        webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server,
        WebhooksApi(webhook_store, verifier, settings.limits, settings.webhooks, dns),
    )
    host.add(
        "media.v1.NotificationService",
        notifications_pb2_grpc.add_NotificationServiceServicer_to_server,
        NotificationsApi(NotificationStore(engine), verifier, settings.limits),
    )
    # With WORKER_LISTEN_ADDR, WorkerService is served there only: the public port answers its
    # methods UNIMPLEMENTED, and NetworkPolicies let only workers reach the worker port.
    worker_listener = WORKER_LISTENER if settings.worker_listen_addr else MAIN_LISTENER
    if settings.worker_listen_addr:
        host.add_listener(WORKER_LISTENER, settings.worker_listen_addr)
    host.add(
        "media.v1.WorkerService",
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
        WorkerApi(store, verifier, settings.s3.bucket),
        listener=worker_listener,
    )
    # The notifier's reads (notifier credential only), beside WorkerService: internal callers.
    host.add(
        "media.v1.JobReaderService",
        job_reader_service_pb2_grpc.add_JobReaderServiceServicer_to_server,
        JobReaderApi(engine, verifier, signer),
        listener=worker_listener,
    )
    relay.start()
    sampler.start()
    sweeper.start()
    await host.start()
    try:
        await wait_for_signal()
    finally:
        await host.stop()
        await relay.stop()
        await sampler.stop()
        await sweeper.stop()
        await nc.drain()
        s3_probe.close()
        await dns.close()
        engine.dispose()
        relay_engine.dispose()
