"""The local stack's dependencies are real servers: started in a temporary directory, used with
the same client libraries the services use, stopped without leaving a process behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import psycopg2
import pytest

from devstack.deps import Dependencies, start_dependencies
from devstack.state import process_alive

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def _select_one(deps: Dependencies) -> int:
    conn = psycopg2.connect(deps.database_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


async def _jetstream_usable(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
        await js.add_stream(name="DEVSTACK_TEST", subjects=["devstack.test"])
        ack = await js.publish("devstack.test", b"hello")
        assert ack.seq == 1
    finally:
        await nc.close()


def test_dependencies_are_real_and_stop_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    deps = start_dependencies(run_dir, use_env=False)
    pids = [server.pid for server in deps.servers]
    try:
        assert len(pids) == 3
        assert deps.database_url.startswith("postgresql+psycopg2://postgres@127.0.0.1:")
        assert deps.database_url.endswith("/media")
        assert _select_one(deps) == 1

        asyncio.run(_jetstream_usable(deps.nats_url))

        s3 = deps.s3_client()
        s3.create_bucket(Bucket="media")
        s3.put_object(Bucket="media", Key="jobs/x/output-0.txt", Body=b"bytes")
        body = s3.get_object(Bucket="media", Key="jobs/x/output-0.txt")["Body"].read()
        assert body == b"bytes"

        # Fault-test hooks: a crashed Postgres and a stopped NATS come back on the same URLs,
        # with their data.
        deps.kill_postgres()
        deps.start_postgres()
        assert _select_one(deps) == 1
        deps.restart_nats()
        asyncio.run(_jetstream_stream_survived(deps.nats_url))
    finally:
        deps.stop()
    for pid in pids:
        assert pid is not None
        assert not process_alive(pid)
    assert _processes_mentioning(str(run_dir)) == []


async def _jetstream_stream_survived(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().stream_info("DEVSTACK_TEST")
        assert info.state.messages == 1
    finally:
        await nc.close()
