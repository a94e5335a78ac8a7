"""`python -m services.job_service` serves; `python -m services.job_service migrate` migrates."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.config import LogSettings, load_or_exit
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
    if sys.argv[1:] == ["migrate"]:
        # Migrations need the database only, not the service's secrets.
        migrate.upgrade(load_or_exit(database_url_from_env, log))
        return
    settings = load_or_exit(JobServiceSettings.from_env, log)
    setup_tracing("job_service", settings.server.tracing)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
