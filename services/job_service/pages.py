"""Page tokens of the List calls (AIP-158): opaque to clients, they hold the last ID of a page
(lists are newest first, by UUIDv7) and the filters the page was listed under, so that a page
cannot be continued under other filters."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

from services.common.errors import invalid_argument

_VERSION = "1"
_M = TypeVar("_M", bound=Message)


def encode(last_id: str, *filters: object) -> str:
    raw = ":".join([_VERSION, *(str(f) for f in filters), last_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, *filters: object, call: str) -> uuid.UUID | None:
    """The last ID of the page `token` ends (None for no token: the first page); INVALID_ARGUMENT
    naming page_token when it is not a token of `call` under the same filters."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        *head, last_id = raw.split(":")
        parsed = uuid.UUID(last_id)
        ok = head == [_VERSION, *(str(f) for f in filters)]
    except ValueError:  # also binascii.Error and UnicodeDecodeError
        ok = False
    if not ok:
        raise invalid_argument(
            [("page_token", f"is not a token from a {call} call with the same filters")]
        )
    return parsed


def fitting(items: Sequence[_M], room: int) -> list[_M]:
    """The first of `items` that fit in `room` bytes of a response (at least one: a page may hold
    fewer than page_size, as AIP-158 allows, but never none)."""
    page: list[_M] = []
    for item in items:
        room -= item.ByteSize() + 8  # and its tag and length
        if page and room < 0:
            break
        page.append(item)
    return page
