"""The SQLAlchemy engine, and running store calls off the event loop in the SQL bulkhead, with
database outages answered as UNAVAILABLE instead of INTERNAL.

The bulkhead (app.py installs it with `use_bulkhead`) has as many threads as the engine has
connections, so a call never waits for a connection once it has a thread, and S3 or CPU work
never takes a thread SQL needs. A call that gets no thread or no answer within
DB_CALL_TIMEOUT_SECONDS is answered UNAVAILABLE: a frozen Postgres holds the bulkhead's threads
(nothing interrupts a socket read), never the caller past that time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import grpc
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.common.bulkhead import Bulkhead, BulkheadTimeout
from services.common.errors import RpcError

P = ParamSpec("P")
T = TypeVar("T")

# What a client is told to wait before retrying a call the database did not answer in time.
_RETRY_AFTER_SECONDS = 1.0

_bulkhead: Bulkhead | None = None


def make_engine(
    url: str,
    pool_size: int,
    *,
    statement_timeout_seconds: float = 15.0,
    application_name: str = "job_service",
) -> Engine:
    timeout_ms = max(1, int(statement_timeout_seconds * 1000))
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
            # No statement may hold a connection (and an RPC) for long: a live Postgres gives up
            # on one about when its caller has been told UNAVAILABLE.
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={min(timeout_ms, 5000)}",
            "application_name": application_name,
        },
    )


def use_bulkhead(bulkhead: Bulkhead) -> None:
    """Runs every `call` in `bulkhead` from now on (app.py, at start-up). Without one (tools,
    tests that build a store alone) calls run on the loop's default executor."""
    global _bulkhead
    _bulkhead = bulkhead


def call_timeout() -> float | None:
    """How long a call may take before it is answered UNAVAILABLE (None: unbounded)."""
    return _bulkhead.timeout_seconds if _bulkhead is not None else None


def timed_out() -> RpcError:
    return _unavailable("the database did not answer in time; retry later")


def _unavailable(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.UNAVAILABLE, message, retry_after_seconds=_RETRY_AFTER_SECONDS)


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    bulkhead = _bulkhead
    try:
        if bulkhead is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await bulkhead.run(fn, *args, **kwargs)
    except BulkheadTimeout as exc:
        raise timed_out() from exc
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise _unavailable("the database is unavailable; retry later") from exc
