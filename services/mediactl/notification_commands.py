"""`mediactl notifications [read]`: the caller's inbox (job_service's NotificationService), one
notification per finished job."""

from __future__ import annotations

import argparse

from media.v1 import notifications_pb2
from services.mediactl import build, render
from services.mediactl.client import Connection
from services.mediactl.exit_codes import EXIT_OK


def cmd_notifications(args: argparse.Namespace, conn: Connection) -> int:
    request = notifications_pb2.ListNotificationsRequest(
        page_size=args.page_size, page_token=args.page_token, unread_only=args.unread
    )
    with conn.notifications() as service:
        response = service.list(request)
    if args.json:
        print(render.to_json(response))
        return EXIT_OK
    print(render.render_notifications(list(response.notifications), response.unread_count))
    if response.next_page_token:
        print(f"next page token: {response.next_page_token}")
    return EXIT_OK


def cmd_notifications_read(args: argparse.Namespace, conn: Connection) -> int:
    request = build.mark_read_request(args)
    with conn.notifications() as service:
        response = service.mark_read(request)
    if args.json:
        print(render.to_json(response))
    else:
        print(f"marked {response.marked} read; {response.unread_count} unread")
    return EXIT_OK
