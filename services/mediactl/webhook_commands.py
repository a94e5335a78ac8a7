"""`mediactl webhooks ...`: the caller's webhook endpoints (job_service's WebhookService), their
deliveries, and `listen`, a local receiver to try them with."""

from __future__ import annotations

import argparse

from media.v1 import webhook_service_pb2
from services.mediactl import build, listen, render
from services.mediactl.client import ConfigError, Connection, list_pages
from services.mediactl.exit_codes import EXIT_OK
from services.mediactl.settings import WEBHOOK_SECRET_ENV, webhook_secret


def cmd_webhooks_add(args: argparse.Namespace, conn: Connection) -> int:
    request = build.create_endpoint_request(args)
    with conn.webhooks() as service:
        response = service.create(request)
    if args.json:
        print(render.to_json(response))
        return EXIT_OK
    print(render.render_endpoint(response.endpoint))
    print("\n".join(render.secret_lines(response.secret)))
    return EXIT_OK


def cmd_webhooks_list(args: argparse.Namespace, conn: Connection) -> int:
    request = webhook_service_pb2.ListWebhookEndpointsRequest(page_size=100)
    with conn.webhooks() as service:
        endpoints, _ = list_pages(service.list, request, lambda response: response.endpoints)
    if args.json:
        print(render.to_json(webhook_service_pb2.ListWebhookEndpointsResponse(endpoints=endpoints)))
    else:
        print(render.render_endpoints(endpoints))
    return EXIT_OK


def cmd_webhooks_update(args: argparse.Namespace, conn: Connection) -> int:
    request = build.update_endpoint_request(args)
    with conn.webhooks() as service:
        response = service.update(request)
    print(render.to_json(response) if args.json else render.render_endpoint(response.endpoint))
    return EXIT_OK


def cmd_webhooks_rm(args: argparse.Namespace, conn: Connection) -> int:
    with conn.webhooks() as service:
        service.delete(args.endpoint_id)
    print(f"deleted webhook endpoint {args.endpoint_id}")
    return EXIT_OK


def cmd_webhooks_rotate(args: argparse.Namespace, conn: Connection) -> int:
    with conn.webhooks() as service:
        response = service.rotate(args.endpoint_id)
    if args.json:
        print(render.to_json(response))
        return EXIT_OK
    print("\n".join(render.secret_lines(response.secret, "new secret")))
    until = render.timestamp(response.endpoint, "previous_secret_expire_time")
    if until:
        print(f"the old secret still signs deliveries until {until}")
    else:
        print("the old secret no longer signs deliveries")
    return EXIT_OK


def cmd_webhooks_deliveries(args: argparse.Namespace, conn: Connection) -> int:
    request = build.deliveries_request(args)
    with conn.webhooks() as service:
        response = service.deliveries(request)
    if args.json:
        print(render.to_json(response))
        return EXIT_OK
    print(render.render_deliveries(list(response.deliveries)))
    if response.next_page_token:
        print(f"next page token: {response.next_page_token}")
    return EXIT_OK


def cmd_webhooks_redeliver(args: argparse.Namespace, conn: Connection) -> int:
    with conn.webhooks() as service:
        response = service.redeliver(args.endpoint_id, args.delivery_id)
    if args.json:
        print(render.to_json(response))
        return EXIT_OK
    print(f"delivery {response.delivery.id} will be sent again now")
    print(render.render_delivery(response.delivery))
    return EXIT_OK


def cmd_webhooks_listen(args: argparse.Namespace, conn: Connection) -> int:
    """Runs until Ctrl-C, which is its normal end (exit 0)."""
    secret = args.secret if args.secret is not None else webhook_secret()
    if not secret:
        raise ConfigError(
            f"webhooks listen needs the endpoint's secret: set {WEBHOOK_SECRET_ENV} or pass "
            "--secret whsec_..."
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is not a port (0-65535)")
    receiver = listen.Receiver(listen.verifier(secret), as_json=args.json)
    try:
        listen.serve(receiver, args.host, args.port)
    except KeyboardInterrupt:
        count = receiver.accepted
        render.err(f"stopped listening; {count} event{'' if count == 1 else 's'} received")
    return EXIT_OK
