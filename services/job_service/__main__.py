"""`python -m services.job_service` serves; `python -m services.job_service migrate` migrates."""

from __future__ import annotations

import asyncio
import sys

from services.common.config import env_str
from services.common.logs import configure_logging
from services.common.tracing import setup_tracing
from services.job_service import migrate
from services.job_service.app import serve
from services.job_service.settings import JobServiceSettings


def main() -> None:
    configure_logging("job_service")
    if sys.argv[1:] == ["migrate"]:
        # Migrations need the database only, not the service's secrets.
        database_url = env_str("DATABASE_URL")
        if not database_url:
            sys.exit("DATABASE_URL must be set")
        migrate.upgrade(database_url)
        return
    if sys.argv[1:]:
        sys.exit("usage: python -m services.job_service [migrate]")
    setup_tracing("job_service")
    asyncio.run(serve(JobServiceSettings.from_env()))


if __name__ == "__main__":
    main()
