"""`mediactl watch --all --json` as a user runs it: a subprocess following the session stack's
real notifier while jobs are created and run, its printed lines checked; Ctrl-C ends it with 0."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from typing import Any

import pytest

from devstack.services import Services
from devstack.state import REPO_ROOT
from media.v1 import job_pb2
from services.common.auth import bearer_metadata, mint_token
from tests.conftest import Clients, workers_paused
from tests.e2e.helpers import WAIT_SECONDS, create

pytestmark = pytest.mark.e2e

IMAGE = job_pb2.ImageParams(prompt="a feed for mediactl", size="256x256")


class Feed:
    """The running `mediactl watch --all --json`, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT_SECONDS)
        assert raw, "mediactl stopped printing: " + await self._stderr()
        line = json.loads(raw)
        self.lines.append(line)
        return line

    async def until(self, done: Any) -> None:
        """Reads lines until `done(lines)` holds."""
        while not done(self.lines):
            await self.next()

    async def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.proc.wait(), WAIT_SECONDS)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        try:
            return (await asyncio.wait_for(self.proc.stderr.read(), 5)).decode()
        except TimeoutError:
            return "(stderr not readable)"


async def start_feed(stack: Services, token: str) -> Feed:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TLS_") and key != "MEDIA_TOKEN_FILE"
    }
    env.update(
        JOB_SERVICE_ADDR=stack.job_service_addr,
        NOTIFIER_ADDR=stack.notifier_addr,
        MEDIA_TOKEN=token,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.mediactl",
        "watch",
        "--all",
        "--json",
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Feed(proc)


def _jobs(lines: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """(job ID, version, status) of every job line."""
    return [
        (line["job"]["id"], int(line["job"]["version"]), line["job"]["status"])
        for line in lines
        if "job" in line
    ]


def _finished(job_ids: set[str]) -> Any:
    def done(lines: list[dict[str, Any]]) -> bool:
        ended = {i for i, _, status in _jobs(lines) if status == "JOB_STATUS_SUCCEEDED"}
        return job_ids <= ended

    return done


async def test_watch_all_prints_the_snapshot_then_every_change_once(
    clients: Clients, stack: Services
) -> None:
    subject = f"mediactl-feed-{secrets.token_hex(4)}"
    token = mint_token(clients.secret, subject)
    user = bearer_metadata(token)
    feed: Feed | None = None
    try:
        with workers_paused(stack):
            waiting = await create(clients, user, image=IMAGE)  # unfinished: in the snapshot
            feed = await start_feed(stack, token)
            await feed.until(lambda lines: any("snapshotDone" in line for line in lines))
            assert _jobs(feed.lines) == [(waiting.id, waiting.version, "JOB_STATUS_QUEUED")]
        # The worker runs the first job now; a second is created while the feed is live.
        second = await create(clients, user, image=IMAGE)
        await feed.until(_finished({waiting.id, second.id}))
        assert await feed.interrupt() == 0  # Ctrl-C is how a feed ends
    finally:
        if feed is not None:
            await feed.kill()

    lines = feed.lines
    assert all(line["cursor"] for line in lines)  # every message says where to resume from
    assert [i for i, line in enumerate(lines) if "snapshotDone" in line] == [1]
    assert not any("heartbeat" in line for line in lines)
    seen = _jobs(lines)
    assert len(set((i, v) for i, v, _ in seen)) == len(seen), "a change printed twice"
    assert {i for i, _, _ in seen} == {waiting.id, second.id}  # this user's jobs only
    for job_id in (waiting.id, second.id):
        mine = [(v, status) for i, v, status in seen if i == job_id]
        versions = [v for v, _ in mine]
        assert versions == sorted(versions), f"out of order: {mine}"
        assert mine[-1][1] == "JOB_STATUS_SUCCEEDED"
        assert "JOB_STATUS_RUNNING" in {status for _, status in mine}
    assert next((v, s) for i, v, s in seen if i == second.id) == (1, "JOB_STATUS_QUEUED")
    # A finished job's line carries its outputs with fresh URLs, so a gallery can show it.
    last = [line for line in lines if "job" in line][-1]["job"]
    assert last["outputs"] and last["outputs"][0]["url"].startswith("http")
