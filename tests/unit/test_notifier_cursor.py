"""Cursors: opaque, round-trip exactly, refuse anything this service did not make."""

from __future__ import annotations

import base64

import pytest

from services.notifier.cursor import Cursor, CursorError, Kind, decode, job_hash

JOB = "0190f3a0-0000-7000-8000-000000000001"


def test_round_trip() -> None:
    cursor = Cursor(1_700_000_000_123_456, 42, Kind.EVENT, 7, job_hash(JOB))
    text = cursor.encode()
    assert "=" not in text and "/" not in text and "+" not in text  # URL-safe, no padding
    assert decode(text) == cursor
    snapshot = Cursor(5, 0, Kind.SNAPSHOT)
    assert decode(snapshot.encode()) == snapshot


def test_a_job_cursor_is_for_its_job_only_and_a_feed_cursor_for_any() -> None:
    assert Cursor(1, 2, Kind.EVENT, 3, job_hash(JOB)).is_for_job(JOB)
    assert not Cursor(1, 2, Kind.EVENT, 3, job_hash(JOB)).is_for_job(JOB.replace("1", "2"))
    assert Cursor(1, 2).is_for_job(JOB)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a cursor",
        "!!!!",
        "A" * 65,
        base64.urlsafe_b64encode(b"\x01\x01" + b"\0" * 10).decode(),  # short
        base64.urlsafe_b64encode(b"\x02\x01" + b"\0" * 28).decode().rstrip("="),  # version
        base64.urlsafe_b64encode(b"\x01\x09" + b"\0" * 28).decode().rstrip("="),  # kind
    ],
)
def test_refuses_what_it_did_not_make(text: str) -> None:
    with pytest.raises(CursorError):
        decode(text)
