"""`mediactl webhooks ...` and `mediactl notifications` as a user runs them: the real CLI in a
subprocess against the session stack's job_service, its printed lines checked; and
`webhooks listen` receiving requests signed by the standardwebhooks package itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from devstack.procs import free_port
from devstack.services import Services
from devstack.state import REPO_ROOT
from media.v1 import webhook_service_pb2, webhook_service_pb2_grpc
from services.common.auth import bearer_metadata, mint_token
from services.common.webhook_signing import new_secret
from services.mediactl.exit_codes import EXIT_OK, EXIT_RPC_ERROR
from tests.conftest import Clients
from tests.e2e.helpers import WAIT_SECONDS, fetch

pytestmark = pytest.mark.e2e

RECEIVER = "http://127.0.0.1:9/hooks/media"  # registered, never called here
PROMPT = "a kite over the dunes"


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def _env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TLS_") and key not in ("MEDIA_TOKEN_FILE", "MEDIACTL_WEBHOOK_SECRET")
    }
    env.update(extra)
    return env


async def mediactl(stack: Services, token: str, *argv: str) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.mediactl",
        *argv,
        cwd=REPO_ROOT,
        env=_env(
            JOB_SERVICE_ADDR=stack.job_service_addr,
            NOTIFIER_ADDR=stack.notifier_addr,
            MEDIA_TOKEN=token,
        ),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_SECONDS)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def _field(ran: Ran, label: str) -> str:
    """The value of a `label:   value` line."""
    for line in ran.lines:
        if line.startswith(f"{label}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in {ran.out!r}")


async def test_add_list_update_rotate_and_remove_an_endpoint(
    clients: Clients, stack: Services
) -> None:
    token = mint_token(clients.secret, f"hooks-{secrets.token_hex(4)}")

    added = await mediactl(
        stack, token, "webhooks", "add", RECEIVER, "--events", "job.succeeded,job.failed",
        "--kinds", "image", "--description", "my gallery",
    )  # fmt: skip
    assert added.code == EXIT_OK, added.err
    endpoint_id = _field(added, "endpoint")
    secret = _field(added, "secret")
    assert secret.startswith("whsec_")
    assert added.lines[1:6] == [
        f"url:        {RECEIVER}",
        "events:     job.succeeded,job.failed",
        "kinds:      image",
        "note:       my gallery",
        "enabled:    yes",
    ]
    assert added.lines[-1] == (
        "the secret is shown only now: keep it where your receiver can read it"
    )

    listed = await mediactl(stack, token, "webhooks", "list")
    assert listed.code == EXIT_OK, listed.err
    assert len(listed.lines) == 2  # the header and this user's one endpoint
    assert listed.lines[1].split() == [
        endpoint_id, "enabled", "job.succeeded,job.failed", "image", RECEIVER, "my", "gallery",
    ]  # fmt: skip
    as_json = await mediactl(stack, token, "webhooks", "list", "--json")
    endpoints = json.loads(as_json.out)["endpoints"]
    assert [e["id"] for e in endpoints] == [endpoint_id]
    assert secret not in as_json.out  # never listed

    updated = await mediactl(
        stack, token, "webhooks", "update", endpoint_id, "--disable", "--kinds", ""
    )
    assert updated.code == EXIT_OK, updated.err
    assert _field(updated, "kinds") == "all"
    assert _field(updated, "enabled").startswith("no (disabled by the owner")

    rotated = await mediactl(stack, token, "webhooks", "rotate", endpoint_id)
    assert rotated.code == EXIT_OK, rotated.err
    new = _field(rotated, "new secret")
    assert new.startswith("whsec_") and new != secret
    until = re.fullmatch(
        r"the old secret still signs deliveries until (\S+ \S+)Z", rotated.lines[-1]
    )
    assert until, rotated.out
    overlap = datetime.fromisoformat(until[1]).replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(hours=23) < overlap <= timedelta(hours=24)  # the default overlap

    deliveries = await mediactl(stack, token, "webhooks", "deliveries", endpoint_id)
    assert (deliveries.code, deliveries.out) == (EXIT_OK, "no deliveries\n")

    removed = await mediactl(stack, token, "webhooks", "rm", endpoint_id)
    assert (removed.code, removed.out) == (EXIT_OK, f"deleted webhook endpoint {endpoint_id}\n")
    assert (await mediactl(stack, token, "webhooks", "list")).out == "no webhook endpoints\n"
    again = await mediactl(stack, token, "webhooks", "rm", endpoint_id)
    assert again.code == EXIT_RPC_ERROR
    assert again.err.startswith("error: NOT_FOUND: ")

    refused = await mediactl(stack, token, "webhooks", "add", "ftp://example.com/hook")
    assert refused.code == EXIT_RPC_ERROR
    assert refused.err.startswith("error: INVALID_ARGUMENT: ")
    assert any(line.startswith("  url: ") for line in refused.err.splitlines()), refused.err


async def test_a_jobs_webhook_then_its_notification_read(clients: Clients, stack: Services) -> None:
    token = mint_token(clients.secret, f"inbox-{secrets.token_hex(4)}")
    created = await mediactl(
        stack, token, "create", "image", "--prompt", PROMPT, "--size", "256x256", "--watch",
        "--webhook", RECEIVER, "--webhook-events", "job.succeeded",
    )  # fmt: skip
    assert created.code == EXIT_OK, created.err
    job_id = created.lines[0].split()[2]
    assert created.lines[0] == f"created job {job_id}  (image, QUEUED)"
    assert _field(created, "webhook secret").startswith("whsec_")
    assert created.lines[2] == (
        "the secret is shown only now: keep it where your receiver can read it"
    )

    inbox = await mediactl(stack, token, "notifications")
    assert inbox.code == EXIT_OK, inbox.err
    assert len(inbox.lines) == 3 and inbox.lines[-1] == "1 unread"
    star, notification_id, _day, _time, job, *title = inbox.lines[1].split()
    assert (star, job, " ".join(title)) == ("*", job_id, f"Image ready: {PROMPT}")

    unread = json.loads((await mediactl(stack, token, "notifications", "--unread", "--json")).out)
    assert [n["id"] for n in unread["notifications"]] == [notification_id]
    assert unread["unreadCount"] == "1"

    marked = await mediactl(stack, token, "notifications", "read", "--all")
    assert (marked.code, marked.out) == (EXIT_OK, "marked 1 read; 0 unread\n")
    after = await mediactl(stack, token, "notifications")
    assert after.lines[1].split()[0] == notification_id  # no longer marked unread
    assert after.lines[-1] == "0 unread"
    assert (await mediactl(stack, token, "notifications", "--unread")).lines == [
        "no notifications",
        "0 unread",
    ]
    again = await mediactl(stack, token, "notifications", "read", notification_id)
    assert (again.code, again.out) == (EXIT_OK, "marked 0 read; 0 unread\n")


# --- webhooks listen ---------------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _signed(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


async def _listen(secret: str, port: int = 0) -> tuple[asyncio.subprocess.Process, str]:
    """`mediactl webhooks listen` started, and the base URL its banner gives."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.mediactl", "webhooks", "listen", "--port", str(port),
        cwd=REPO_ROOT,
        env=_env(MEDIACTL_WEBHOOK_SECRET=secret),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    banner = (await asyncio.wait_for(proc.stderr.readline(), WAIT_SECONDS)).decode()
    found = re.match(r"listening on (http://127\.0\.0\.1:(\d+)/) ", banner)
    assert found and (not port or found[2] == str(port)), banner
    return proc, found[1]


async def test_listen_prints_a_signed_event_and_refuses_a_forged_one() -> None:
    secret = new_secret()
    proc, base = await _listen(secret)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = base + "hooks/media"
        job = {
            "id": "01935f3e-7a00-7000-8000-0000000000aa",
            "kind": "MEDIA_KIND_IMAGE",
            "status": "JOB_STATUS_SUCCEEDED",
            "version": 4,
            "outputs": [{"index": 0, "url": "https://s3.example/media/o-0.png"}],
        }
        body = json.dumps(
            {"type": "job.succeeded", "timestamp": "2025-03-01T10:00:03Z", "data": job}
        ).encode()

        assert await asyncio.to_thread(_post, url, body, _signed(secret, "msg-good", body)) == 204
        forged = _signed(new_secret(), "msg-forged", body)
        assert await asyncio.to_thread(_post, url, body, forged) == 401

        printed = [
            (await asyncio.wait_for(proc.stdout.readline(), WAIT_SECONDS)).decode().rstrip("\n")
            for _ in range(2)
        ]
        assert printed == [
            f"2025-03-01 10:00:03Z  job.succeeded  {job['id']}  SUCCEEDED  v4  [msg-good]",
            "  #0  https://s3.example/media/o-0.png",
        ]
        warning = (await asyncio.wait_for(proc.stderr.readline(), WAIT_SECONDS)).decode()
        assert warning == (
            "warning: refused POST /hooks/media from 127.0.0.1: a bad signature "
            "(No matching signature found) (answered 401)\n"
        )

        proc.send_signal(signal.SIGINT)  # Ctrl-C is how it ends
        assert await asyncio.wait_for(proc.wait(), WAIT_SECONDS) == EXIT_OK
        assert await proc.stdout.read() == b""  # the forged event was never printed
        assert (await proc.stderr.read()).decode() == "stopped listening; 1 event received\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the README's "Try it in a minute", end to end ----------------------------------------------


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), WAIT_SECONDS)


async def _printed_event(proc: asyncio.subprocess.Process) -> list[str]:
    """The next event `listen` prints: its line, then one line per output URL."""
    assert proc.stdout is not None
    lines = [(await asyncio.wait_for(proc.stdout.readline(), WAIT_SECONDS)).decode().rstrip()]
    lines.append((await asyncio.wait_for(proc.stdout.readline(), WAIT_SECONDS)).decode().rstrip())
    return lines


async def test_the_readme_walkthrough_from_the_sender_to_listen(
    clients: Clients, stack: Services
) -> None:
    token = mint_token(clients.secret, f"walk-{secrets.token_hex(4)}")
    port = free_port("127.0.0.1")
    added = await mediactl(stack, token, "webhooks", "add", f"http://127.0.0.1:{port}/")
    assert added.code == EXIT_OK, added.err
    endpoint_id, secret = _field(added, "endpoint"), _field(added, "secret")

    listener, _ = await _listen(secret, port)
    try:
        created = await mediactl(
            stack, token, "create", "image", "--prompt", PROMPT, "--size", "256x256"
        )
        assert created.code == EXIT_OK, created.err
        job_id = created.lines[0].split()[2]
        line, output = await _printed_event(listener)
        # The default events are the finished ones: the first thing printed is the success.
        assert re.fullmatch(
            rf"\S+ \S+Z  job\.succeeded  {job_id}  SUCCEEDED  v\d+  \[[0-9a-f-]{{36}}\]", line
        ), line
        url = output.split()[1]
        assert output.startswith("  #0  http")
        assert (await fetch(url)).startswith(b"\x89PNG")  # the bytes behind the signed URL
    finally:
        await _stop(listener)

    # With nobody listening, the next job's delivery fails on every attempt of the (compressed)
    # schedule; `deliveries` shows why, and `redeliver` sends it once the listener is back.
    created = await mediactl(
        stack, token, "create", "image", "--prompt", PROMPT, "--size", "256x256"
    )
    second_job = created.lines[0].split()[2]
    hooks = webhook_service_pb2_grpc.WebhookServiceStub(clients.job_channel)
    metadata = bearer_metadata(token)

    async def failed() -> webhook_service_pb2.WebhookDelivery:
        while True:
            listed = await hooks.ListWebhookDeliveries(
                webhook_service_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id),
                metadata=metadata,
            )
            mine = [d for d in listed.deliveries if d.job_id == second_job]
            if mine and mine[0].state == webhook_service_pb2.DELIVERY_STATE_FAILED:
                return mine[0]
            await asyncio.sleep(0.2)

    delivery = await asyncio.wait_for(failed(), WAIT_SECONDS)
    # Every attempt of the schedule, each refused, in words that name no address.
    assert [(a.status_code, a.error) for a in delivery.attempts] == [
        (0, "connection failed: connection refused")
    ] * 4
    shown = await mediactl(stack, token, "webhooks", "deliveries", endpoint_id, "--state", "failed")
    assert shown.code == EXIT_OK, shown.err
    assert delivery.id in shown.out and "connection failed: connection refused" in shown.out

    listener, _ = await _listen(secret, port)
    try:
        again = await mediactl(stack, token, "webhooks", "redeliver", endpoint_id, delivery.id)
        assert again.code == EXIT_OK, again.err
        line, _ = await _printed_event(listener)
        assert f"job.succeeded  {second_job}  SUCCEEDED" in line and f"[{delivery.id}]" in line
    finally:
        await _stop(listener)
