"""NotificationService: the caller's inbox, one notification per finished job. Every call is
authenticated and sees the caller's notifications only (another user's ID is NOT_FOUND)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from media.v1 import notifications_pb2 as pb
from media.v1 import notifications_pb2_grpc
from services.common.auth import TokenVerifier
from services.common.errors import invalid_argument, not_found
from services.common.ids import parse_uuid
from services.job_service import pages, validation
from services.job_service.database import call
from services.job_service.notification_store import NotificationStore
from services.job_service.settings import Limits

MAX_MARKED_IDS = 100

Context = grpc.aio.ServicerContext[Any, Any]


class NotificationsApi(notifications_pb2_grpc.NotificationServiceServicer):
    def __init__(self, store: NotificationStore, verifier: TokenVerifier, limits: Limits) -> None:
        self._store = store
        self._verifier = verifier
        self._limits = limits

    async def _owner(self, context: Context) -> str:
        return (await self._verifier.identify(context.invocation_metadata())).subject

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        owner = await self._owner(context)
        bad: validation.Violations = []
        size = validation.page_size(request.page_size, self._limits, bad)
        if bad:
            raise invalid_argument(bad)
        unread_only = int(request.unread_only)
        before = pages.decode(request.page_token, unread_only, call="ListNotifications")
        # One extra row tells whether another page exists.
        found, unread = await call(
            self._store.list_notifications,
            owner,
            limit=size + 1,
            before=before,
            unread_only=request.unread_only,
        )
        response = pb.ListNotificationsResponse(notifications=found[:size], unread_count=unread)
        if len(found) > size:
            response.next_page_token = pages.encode(found[size - 1].id, unread_only)
        return response

    async def MarkNotificationsRead(
        self, request: pb.MarkNotificationsReadRequest, context: Context
    ) -> pb.MarkNotificationsReadResponse:
        owner = await self._owner(context)
        ids = _mark_request(request)
        marked = await call(self._store.mark_read, owner, ids)
        if marked.missing is not None:
            raise not_found(f"notification {marked.missing}")
        return pb.MarkNotificationsReadResponse(marked=marked.marked, unread_count=marked.unread)


def _mark_request(request: pb.MarkNotificationsReadRequest) -> list[uuid.UUID] | None:
    """The IDs to mark, without duplicates, in the order given (None: all)."""
    field = "notification_ids"
    if request.all:
        if request.notification_ids:
            raise invalid_argument([(field, "must be empty when all is true")])
        return None
    if not request.notification_ids:
        raise invalid_argument([(field, "must name at least one ID, or set all = true")])
    if len(request.notification_ids) > MAX_MARKED_IDS:
        raise invalid_argument([(field, f"must name at most {MAX_MARKED_IDS} IDs")])
    ids: list[uuid.UUID] = []
    bad: validation.Violations = []
    for i, raw in enumerate(request.notification_ids):
        parsed = parse_uuid(raw)
        if parsed is None:
            bad.append((f"{field}[{i}]", "must be a notification ID (a UUID)"))
        elif parsed not in ids:
            ids.append(parsed)
    if bad:
        raise invalid_argument(bad)
    return ids
