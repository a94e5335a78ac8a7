"""The local stack: real Postgres, NATS JetStream and S3 (moto) on free local ports, the three
services as child processes, and the `up` / `down` / `run` / `env` commands behind make; also
protogen, behind `make proto`. Dev-only: it is never installed nor copied into the image, so it
runs from the repo root (`python -m devstack ...`), like tests/ and bench/.

Python API (tests, the benchmark):
    deps = start_dependencies(run_dir)                   # devstack.deps
    services = start_services(run_dir, deps, secret)     # devstack.services
    ...
    services.stop(); deps.stop()

    with ExitStack() as stack:                           # a `make up` stack, reused or started
        up = bench_stack(stack)                          # .job_service_addr, .notifier_addr, .token
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devstack.cli import UpStack


def bench_stack(exit_stack: ExitStack, *, workers: int = 1) -> UpStack:
    """See devstack.cli.bench_stack (imported lazily: the package stays light)."""
    from devstack.cli import bench_stack as start

    return start(exit_stack, workers=workers)
