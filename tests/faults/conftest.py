"""Fault tests: real processes, broken on purpose.

Each test module gets a stack of its own (Postgres, nats-server, moto and the three services,
in a temporary directory), so that killing, freezing and restarting them never disturbs the
session's shared stack nor another module. A module sizes its stack with module attributes:
STACK_WORKERS (default 2) and STACK_ENV (settings on top of FAULT_ENV).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from devstack.deps import start_dependencies
from devstack.services import start_services
from tests.faults.helpers import FAULT_ENV, FaultStack


@pytest_asyncio.fixture(scope="module")
async def fault(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultStack]:
    # Started from the main thread on purpose: children then die with the test process even
    # if it is killed (PR_SET_PDEATHSIG is tied to the thread that forks).
    name = request.module.__name__.rpartition(".")[2]
    run_dir = tmp_path_factory.mktemp(f"faults-{name}")
    env = {**FAULT_ENV, **getattr(request.module, "STACK_ENV", {})}
    deps = start_dependencies(run_dir, use_env=False)
    try:
        secret = secrets.token_urlsafe(32)
        services = start_services(
            run_dir,
            deps,
            secret,
            workers=getattr(request.module, "STACK_WORKERS", 2),
            extra_env=env,
        )
        try:
            stack = FaultStack(deps, services, secret, run_dir)
            try:
                yield stack
            finally:
                await stack.close()
        finally:
            services.stop(10)
    finally:
        deps.stop()
