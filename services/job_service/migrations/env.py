"""Alembic environment: online migrations only, serialized across replicas by an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from services.job_service.schema import metadata

# Any constant works; it only has to be the same in every replica.
_MIGRATION_LOCK = 7_221_004_510


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("sqlalchemy.url is not set (migrate.py sets it from DATABASE_URL)")
    engine = create_engine(url)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


run_migrations_online()
