"""The SQLAlchemy engine, and running store calls off the event loop with database outages
answered as UNAVAILABLE instead of INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.common.errors import unavailable

P = ParamSpec("P")
T = TypeVar("T")


def make_engine(url: str, pool_size: int) -> Engine:
    return create_engine(
        url,
        # A fixed pool: overflow connections would be opened and closed under load, and each one
        # costs Postgres a backend process.
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 5,
            # No statement may hold a connection (and an RPC) for long.
            "options": "-c statement_timeout=15000 -c lock_timeout=5000",
            "application_name": "job_service",
        },
    )


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise unavailable("the database is unavailable; retry later") from exc
