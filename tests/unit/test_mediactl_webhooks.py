"""mediactl webhooks and notifications: flags -> requests, what is printed, and the local
receiver of `webhooks listen` (a real HTTP server in this process, signatures made by the
standardwebhooks package itself)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google.protobuf import duration_pb2, timestamp_pb2
from standardwebhooks import Webhook

from media.v1 import job_pb2, notifications_pb2, webhook_service_pb2
from services.common.webhook_signing import new_secret
from services.mediactl import build, listen, render
from services.mediactl.client import ConfigError
from services.mediactl.exit_codes import EXIT_USAGE
from services.mediactl.main import main
from services.mediactl.parser import build_parser

ENDPOINT_ID = "01935f3e-7a00-7000-8000-0000000000e1"
JOB_ID = "01935f3e-7a00-7000-8000-0000000000aa"
CONNECTION = ["--addr", "127.0.0.1:1", "--token", "t"]  # never dialed: the flags fail first


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def _ts(text: str) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return value


# --- flags -> requests --------------------------------------------------------------------------


def test_create_with_a_webhook_sets_the_jobs_webhook() -> None:
    request = build.create_request(
        _args(
            "create", "image", "--prompt", "p", "--webhook", "https://example.com/hook",
            "--webhook-events", "job.succeeded,job.failed", "--webhook-events", "job.progress",
        )
    )  # fmt: skip
    assert request.HasField("webhook")
    assert request.webhook.url == "https://example.com/hook"
    assert list(request.webhook.event_types) == ["job.succeeded", "job.failed", "job.progress"]
    assert not build.create_request(_args("create", "video", "--prompt", "p")).HasField("webhook")


def test_webhook_events_without_a_webhook_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    argv = [*CONNECTION, "create", "image", "--prompt", "p", "--webhook-events", "job.failed"]
    assert main(argv) == EXIT_USAGE
    assert "--webhook-events goes with --webhook URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["webhooks", "add", "https://e.com", "--events", "job.succeeded,job.done"],
            "argument --events: 'job.done' is not an event type; choose from job.queued, "
            "job.running, job.progress, job.succeeded, job.failed, job.canceled",
        ),
        (
            ["webhooks", "update", ENDPOINT_ID, "--kinds", "image,audio"],
            "argument --kinds: 'audio' is not a kind; choose from image, video",
        ),
        (
            [
                "create",
                "video",
                "--prompt",
                "p",
                "--webhook",
                "https://e.com",
                "--webhook-events",
                "succeeded",
            ],
            "argument --webhook-events: 'succeeded' is not an event type",
        ),
        (
            ["webhooks", "deliveries", ENDPOINT_ID, "--state", "lost"],
            "argument --state: 'lost' is not one of pending, succeeded, failed",
        ),
        (
            ["webhooks", "update", ENDPOINT_ID, "--enable", "--disable"],
            "argument --disable: not allowed with argument --enable",
        ),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(argv, message, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([*CONNECTION, *argv]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_add_takes_comma_separated_and_repeated_filters() -> None:
    request = build.create_endpoint_request(
        _args(
            "webhooks", "add", "https://e.com/h", "--events", "job.succeeded, job.failed",
            "--events", "job.canceled", "--kinds", "video", "--description", "my app",
        )
    )  # fmt: skip
    assert request.url == "https://e.com/h"
    assert list(request.event_types) == ["job.succeeded", "job.failed", "job.canceled"]
    assert list(request.kinds) == [job_pb2.MEDIA_KIND_VIDEO]
    assert request.description == "my app"
    plain = build.create_endpoint_request(_args("webhooks", "add", "https://e.com/h"))
    assert (list(plain.event_types), list(plain.kinds), plain.description) == ([], [], "")


def test_update_names_in_its_mask_exactly_what_was_given() -> None:
    request = build.update_endpoint_request(
        _args("webhooks", "update", ENDPOINT_ID, "--url", "https://e.com/new", "--disable")
    )
    assert request.endpoint_id == ENDPOINT_ID
    assert list(request.update_mask) == ["url", "enabled"]
    assert request.url == "https://e.com/new" and request.enabled is False

    everything = build.update_endpoint_request(
        _args(
            "webhooks", "update", ENDPOINT_ID, "--events", "job.failed", "--kinds", "",
            "--description", "", "--enable",
        )
    )  # fmt: skip
    assert list(everything.update_mask) == ["event_types", "kinds", "description", "enabled"]
    assert list(everything.event_types) == ["job.failed"]
    assert list(everything.kinds) == []  # '' clears the filter: every kind
    assert everything.enabled is True


def test_update_with_nothing_to_change_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([*CONNECTION, "webhooks", "update", ENDPOINT_ID]) == EXIT_USAGE
    assert "give at least one of --url, --events, --kinds" in capsys.readouterr().err


def test_deliveries_filter_and_paging() -> None:
    request = build.deliveries_request(
        _args("webhooks", "deliveries", ENDPOINT_ID, "--state", "failed", "--page-size", "5")
    )
    assert request.endpoint_id == ENDPOINT_ID
    assert request.state == webhook_service_pb2.DELIVERY_STATE_FAILED
    assert request.page_size == 5
    unfiltered = build.deliveries_request(_args("webhooks", "deliveries", ENDPOINT_ID))
    assert unfiltered.state == webhook_service_pb2.DELIVERY_STATE_UNSPECIFIED


def test_read_takes_ids_or_all() -> None:
    some = build.mark_read_request(_args("notifications", "read", "n1", "n2"))
    assert (list(some.notification_ids), some.all) == (["n1", "n2"], False)
    every = build.mark_read_request(_args("notifications", "read", "--all"))
    assert (list(every.notification_ids), every.all) == ([], True)
    for argv in (("notifications", "read"), ("notifications", "read", "n1", "--all")):
        with pytest.raises(build.InputError, match="give notification IDs or --all"):
            build.mark_read_request(_args(*argv))
    listing = _args("notifications", "--unread")
    assert listing.unread is True and not hasattr(listing, "notification_ids")


def test_listen_needs_a_whsec_secret(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MEDIACTL_WEBHOOK_SECRET", raising=False)
    assert main(["webhooks", "listen", "--port", "0"]) == EXIT_USAGE
    assert "set MEDIACTL_WEBHOOK_SECRET or pass --secret" in capsys.readouterr().err
    monkeypatch.setenv("MEDIACTL_WEBHOOK_SECRET", "not-a-secret")
    assert main(["webhooks", "listen", "--port", "0"]) == EXIT_USAGE
    assert "must be the endpoint's whsec_... secret" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        listen.verifier("whsec_")


# --- rendering ---------------------------------------------------------------------------------


def _endpoint(**extra) -> webhook_service_pb2.WebhookEndpoint:  # type: ignore[no-untyped-def]
    fields = {
        "id": ENDPOINT_ID,
        "url": "https://e.com/hook",
        "event_types": ["job.succeeded", "job.failed"],
        "kinds": [job_pb2.MEDIA_KIND_IMAGE],
        "enabled": True,
        "create_time": _ts("2025-03-01T10:00:00"),
    }
    return webhook_service_pb2.WebhookEndpoint(**{**fields, **extra})


def test_render_endpoint_and_its_secret() -> None:
    text = render.render_endpoint(
        _endpoint(description="my app", previous_secret_expire_time=_ts("2025-03-02T10:00:00"))
    )
    assert text.splitlines() == [
        f"endpoint:   {ENDPOINT_ID}",
        "url:        https://e.com/hook",
        "events:     job.succeeded,job.failed",
        "kinds:      image",
        "note:       my app",
        "enabled:    yes",
        "created:    2025-03-01 10:00:00Z",
        "old secret: still signs until 2025-03-02 10:00:00Z",
    ]
    assert render.secret_lines("whsec_abc") == [
        "secret:     whsec_abc",
        "the secret is shown only now: keep it where your receiver can read it",
    ]


def test_render_endpoints_shows_defaults_and_why_one_is_disabled() -> None:
    default = webhook_service_pb2.WebhookEndpoint(id="e2", url="http://b/", enabled=True)
    gone = _endpoint(
        enabled=False,
        disabled_reason="the endpoint answered 410 Gone",
        disable_time=_ts("2025-03-03T00:00:00"),
    )
    assert render.render_endpoints([default, gone]).splitlines() == [
        "ID                                    STATE     EVENTS                                 "
        "KINDS  URL                 NOTE",
        "e2                                    enabled   job.succeeded,job.failed,job.canceled  "
        "all    http://b/",
        f"{ENDPOINT_ID}  disabled  job.succeeded,job.failed               "
        "image  https://e.com/hook  the endpoint answered 410 Gone",
    ]
    assert "enabled:    no (the endpoint answered 410 Gone, since 2025-03-03 00:00:00Z)" in (
        render.render_endpoint(gone)
    )
    assert render.render_endpoints([]) == "no webhook endpoints"


def test_render_delivery_with_its_attempts() -> None:
    def latency(ms: int) -> duration_pb2.Duration:
        value = duration_pb2.Duration()
        value.FromTimedelta(timedelta(milliseconds=ms))
        return value

    delivery = webhook_service_pb2.WebhookDelivery(
        id="d1",
        endpoint_id=ENDPOINT_ID,
        event_type="job.succeeded",
        job_id=JOB_ID,
        job_version=4,
        state=webhook_service_pb2.DELIVERY_STATE_PENDING,
        create_time=_ts("2025-03-01T10:00:00"),
        next_attempt_time=_ts("2025-03-01T10:05:05"),
        attempts=[
            webhook_service_pb2.WebhookAttempt(
                number=1,
                start_time=_ts("2025-03-01T10:00:01"),
                status_code=500,
                latency=latency(120),
                response_head="oops\n  try later",
            ),
            webhook_service_pb2.WebhookAttempt(
                number=2,
                start_time=_ts("2025-03-01T10:00:06"),
                latency=latency(15000),
                error="timeout",
                manual=True,
            ),
        ],
    )
    assert render.render_delivery(delivery).splitlines() == [
        f"d1  job.succeeded  job {JOB_ID} v4  PENDING  created 2025-03-01 10:00:00Z",
        "  #1  2025-03-01 10:00:01Z  500  120 ms  oops try later",
        "  #2  2025-03-01 10:00:06Z  ---  15000 ms  timeout  (manual)",
        "  next attempt 2025-03-01 10:05:05Z",
    ]
    assert render.render_deliveries([]) == "no deliveries"


def test_render_notifications_marks_the_unread_and_counts_them() -> None:
    notes = [
        notifications_pb2.Notification(
            id="n2",
            type="job.failed",
            title="Video failed",
            message="blocked by filters",
            job_id="j2",
            create_time=_ts("2025-03-01T10:00:02"),
        ),
        notifications_pb2.Notification(
            id="n1",
            type="job.succeeded",
            title="2 images ready",
            job_id="j1",
            create_time=_ts("2025-03-01T10:00:01"),
            read=True,
        ),
    ]
    assert render.render_notifications(notes, 1).splitlines() == [
        "   ID  CREATED               JOB  TITLE",
        "*  n2  2025-03-01 10:00:02Z  j2   Video failed: blocked by filters",
        "   n1  2025-03-01 10:00:01Z  j1   2 images ready",
        "1 unread",
    ]
    assert render.render_notifications([], 0) == "no notifications\n0 unread"


# --- webhooks listen ---------------------------------------------------------------------------

SECRET = new_secret()


def _delivery(status: str = "JOB_STATUS_SUCCEEDED") -> bytes:
    job = {
        "id": JOB_ID,
        "kind": "MEDIA_KIND_IMAGE",
        "status": status,
        "version": 4,
        "outputs": [
            {"index": 1, "url": "https://s3.example/o-1.png", "bucket": "media", "key": "k1"},
            {"index": 0, "url": "https://s3.example/o-0.png", "bucket": "media", "key": "k0"},
        ],
        "unknown_field": "later versions may add fields",
    }
    event_type = "job.succeeded" if status == "JOB_STATUS_SUCCEEDED" else "job.running"
    body = {"type": event_type, "timestamp": "2025-03-01T10:00:03.250Z", "data": job}
    return json.dumps(body).encode()


def _signed(body: bytes, secret: str = SECRET, msg_id: str = "msg-1") -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[listen.Receiver, str]]:
    made = listen.Receiver(listen.verifier(SECRET))
    server = TestServer(listen.application(made), host="127.0.0.1")
    await server.start_server()
    try:
        yield made, str(server.make_url("/hooks/media"))
    finally:
        await server.close()


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status


async def test_listen_accepts_a_signed_delivery_and_prints_it(receiver, capsys) -> None:  # type: ignore[no-untyped-def]
    made, url = receiver
    body = _delivery()
    assert await _post(url, body, _signed(body)) == 204
    assert capsys.readouterr().out.splitlines() == [
        f"2025-03-01 10:00:03Z  job.succeeded  {JOB_ID}  SUCCEEDED  v4  [msg-1]",
        "  #0  https://s3.example/o-0.png",
        "  #1  https://s3.example/o-1.png",
    ]
    # Signed with the new and the old secret (a rotation): either one will do.
    both = _signed(body, new_secret())
    both["webhook-signature"] += " " + _signed(body)["webhook-signature"]
    assert await _post(url, body, both) == 204
    assert made.accepted == 2 and made.refused == 0


async def test_listen_refuses_a_wrong_signature_with_401(receiver, capsys) -> None:  # type: ignore[no-untyped-def]
    made, url = receiver
    body = _delivery()
    assert await _post(url, body, _signed(body, new_secret())) == 401
    tampered = _signed(body)
    assert await _post(url, body.replace(b"SUCCEEDED", b"FAILED"), tampered) == 401
    assert await _post(url, body, {"webhook-id": "x"}) == 401
    malformed = {**_signed(body), "webhook-signature": "garbage"}
    assert await _post(url, body, malformed) == 401
    captured = capsys.readouterr()
    assert captured.out == ""
    warnings = captured.err.splitlines()
    assert warnings[0] == (
        "warning: refused POST /hooks/media from 127.0.0.1: a bad signature "
        "(No matching signature found) (answered 401)"
    )
    assert len(warnings) == 4 and all("(answered 401)" in w for w in warnings)
    assert made.accepted == 0 and made.refused == 4


async def test_listen_caps_the_body_and_wants_json(receiver, capsys) -> None:  # type: ignore[no-untyped-def]
    _, url = receiver
    huge = b"x" * (listen.MAX_BODY_BYTES + 1)
    assert await _post(url, huge, _signed(huge)) == 413
    not_json = b"hello"
    assert await _post(url, not_json, _signed(not_json)) == 400
    err = capsys.readouterr().err
    assert "a body over 1.0 MiB (answered 413)" in err
    assert "a signed body that is not a JSON object (answered 400)" in err


def test_event_lines_of_an_unfinished_failed_or_odd_event() -> None:
    running = job_pb2.Job(id="j", status=job_pb2.JOB_STATUS_RUNNING, version=2)
    assert render.webhook_event_lines("t", "job.running", "m", running) == [
        "t  job.running    j  RUNNING    v2  [m]"
    ]
    failed = job_pb2.Job(
        id="j",
        status=job_pb2.JOB_STATUS_FAILED,
        version=3,
        error=job_pb2.JobError(code=job_pb2.ERROR_CODE_GENERATION_FAILED, message="boom"),
    )
    assert render.webhook_event_lines("t", "job.failed", "m", failed) == [
        "t  job.failed     j  FAILED     v3  (GENERATION_FAILED: boom)  [m]"
    ]
    assert render.webhook_event_lines("t", "x", "m", listen.parse_job([1])) == [
        "t  x  (its data is not a job)  [m]"
    ]
    assert listen.event_time("2025-03-01T10:00:03Z") == "2025-03-01 10:00:03Z"
    assert listen.event_time("yesterday") == "yesterday"
