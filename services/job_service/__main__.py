"""`python -m services.job_service` serves; `python -m services.job_service migrate` migrates."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.config import LogSettings, SettingsError
from services.common.logs import configure_logging
from services.common.tracing import setup_tracing
from services.job_service import migrate
from services.job_service.app import serve
from services.job_service.settings import JobServiceSettings, database_url_from_env

log = logging.getLogger("services.job_service")


def main() -> None:
    configure_logging("job_service", LogSettings.from_env().level)
    if sys.argv[1:] not in ([], ["migrate"]):
        sys.exit("usage: python -m services.job_service [migrate]")
    try:
        if sys.argv[1:] == ["migrate"]:
            # Migrations need the database only, not the service's secrets.
            migrate.upgrade(database_url_from_env())
            return
        settings = JobServiceSettings.from_env()
    except SettingsError as exc:
        log.error("bad settings: %s", exc)
        sys.exit(2)
    setup_tracing("job_service", settings.server.tracing)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
