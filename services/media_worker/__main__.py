"""`python -m services.media_worker`: consume dispatch messages until SIGTERM, then drain.

Serves only gRPC health and reflection (port 50053 by default): NOT_SERVING until the worker is
consuming and again while it shuts down, so Kubernetes probes and grpcurl see its state.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.config import LogSettings, load_or_exit
from services.common.logs import configure_logging
from services.common.metrics import serve_metrics
from services.common.server import ServiceHost, install_blocking_pool, wait_for_signal
from services.common.tracing import setup_tracing
from services.media_worker.settings import WorkerSettings
from services.media_worker.worker import MediaWorker

log = logging.getLogger("services.media_worker")


async def main() -> int:
    settings = load_or_exit(WorkerSettings.from_env, log)
    worker = load_or_exit(lambda: MediaWorker(settings), log)  # its generator reads settings too
    setup_tracing("media_worker", settings.server.tracing)
    install_blocking_pool(settings.server.blocking_threads)
    # Handlers go in first so a SIGTERM during start-up is a clean stop, not a kill.
    signal_task = asyncio.create_task(wait_for_signal())
    await asyncio.sleep(0)
    serve_metrics(settings.server.metrics)
    host = ServiceHost("media_worker", settings.server)
    # Ready while consuming (set_serving below) and while NATS and job_service are reachable.
    host.add_check("nats", worker.nats_ok)
    host.add_check("job_service", worker.job_service_ok)
    await host.set_serving(False)
    await host.start()
    start_task = asyncio.create_task(worker.start())
    await asyncio.wait({signal_task, start_task}, return_when=asyncio.FIRST_COMPLETED)
    if start_task.done() and start_task.exception() is None:
        await host.set_serving(True)
        await signal_task
    else:
        start_task.cancel()
        await asyncio.gather(start_task, return_exceptions=True)
        if start_task.done() and not start_task.cancelled() and start_task.exception():
            log.error("start-up failed", exc_info=start_task.exception())
            await worker.stop()
            await host.stop()
            return 1
    await host.set_serving(False)
    await worker.stop()
    await host.stop()
    log.info("media worker stopped")
    return 0


if __name__ == "__main__":
    configure_logging("media_worker", LogSettings.from_env().level)
    sys.exit(asyncio.run(main()))
