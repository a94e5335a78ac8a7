"""`python -m services.webhooks`: the webhook sender. Serves only gRPC health and reflection
(port 50055 by default); metrics on METRICS_PORT."""

from __future__ import annotations

import asyncio
import logging

from services.common.config import LogSettings, load_or_exit
from services.common.logs import configure_logging
from services.common.tracing import setup_tracing
from services.webhooks.app import serve
from services.webhooks.settings import WebhookSettings

log = logging.getLogger("services.webhooks")


def main() -> None:
    configure_logging("webhooks", LogSettings.from_env().level)
    settings = load_or_exit(WebhookSettings.from_env, log)
    setup_tracing("webhooks", settings.server.tracing)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
