"""`mediactl webhooks listen`: a local HTTP receiver for trying webhooks. Every POST (any path)
must carry a valid Standard Webhooks signature made with the endpoint's secret: it is answered
204 and printed as one line; a bad signature gets 401, a body over MAX_BODY_BYTES 413, and a
warning on stderr."""

from __future__ import annotations

import asyncio
import binascii
import json
import sys
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError, WebhookVerificationError

from media.v1 import job_pb2
from services.common.webhook_signing import ID_HEADER, SECRET_PREFIX
from services.mediactl import render
from services.mediactl.client import ConfigError
from services.mediactl.settings import WEBHOOK_SECRET_ENV

DEFAULT_HOST = "127.0.0.1"  # this machine only, unless --host says otherwise
MAX_BODY_BYTES = 1 << 20  # deliveries are a job's JSON: far smaller


def verifier(secret: str) -> Webhook:
    """The checker of signatures made with `secret`; ConfigError when it is no whsec_ secret."""
    refusal = (
        f"--secret ({WEBHOOK_SECRET_ENV}) must be the endpoint's {SECRET_PREFIX}... secret, as "
        "`webhooks add` or `webhooks rotate` printed it"
    )
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(refusal)
    try:
        return Webhook(secret)
    except (binascii.Error, ValueError, EmptyWebhookSecretError):
        raise ConfigError(refusal) from None


def parse_job(data: object) -> job_pb2.Job | None:
    """A delivery's `data` (a Job as proto JSON), or None when it is not one."""
    if not isinstance(data, dict):
        return None
    try:
        return json_format.ParseDict(data, job_pb2.Job(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return None


def event_time(text: object) -> str:
    """A delivery's RFC 3339 `timestamp` as the CLI writes times (as given if it is not one)."""
    stamp = Timestamp()
    try:
        stamp.FromJsonString(str(text))
    except ValueError:
        return str(text)
    return render.utc_time(stamp)


class Receiver:
    """Checks and prints what is POSTed to it."""

    def __init__(self, webhook: Webhook, *, as_json: bool = False) -> None:
        self._webhook = webhook
        self._as_json = as_json
        self.accepted = 0
        self.refused = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, 413, f"a body over {render.human_bytes(MAX_BODY_BYTES)}")
        try:
            self._webhook.verify(body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            # ValueError: a malformed signature header or a body that is not UTF-8.
            return self._refuse(request, 401, f"a bad signature ({exc or type(exc).__name__})")
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self._refuse(request, 400, "a signed body that is not a JSON object")
        self.accepted += 1
        self._print(request.headers.get(ID_HEADER, ""), payload)
        return web.Response(status=204)

    def _print(self, webhook_id: str, payload: dict[str, Any]) -> None:
        if self._as_json:
            print(json.dumps({"webhook_id": webhook_id, **payload}), flush=True)
            return
        lines = render.webhook_event_lines(
            event_time(payload.get("timestamp", "")),
            str(payload.get("type", "?")),
            webhook_id,
            parse_job(payload.get("data")),
        )
        print("\n".join(lines), flush=True)

    def _refuse(self, request: web.Request, status: int, what: str) -> web.Response:
        self.refused += 1
        render.err(
            f"warning: refused {request.method} {request.path} from {request.remote}: {what} "
            f"(answered {status})"
        )
        return web.Response(status=status)


def serve(receiver: Receiver, host: str, port: int) -> None:
    """Serves until interrupted (KeyboardInterrupt, raised after the server has closed)."""
    asyncio.run(_serve(receiver, host, port))


def application(receiver: Receiver) -> web.Application:
    """POSTs to any path (the URL registered may have one) go to `receiver`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/{path:.*}", receiver.handle)
    return app


async def _serve(receiver: Receiver, host: str, port: int) -> None:
    runner = web.AppRunner(application(receiver), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        bound = runner.addresses[0]
        render.err(f"listening on http://{host}:{bound[1]}/ for signed webhooks (Ctrl-C to stop)")
        sys.stderr.flush()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
