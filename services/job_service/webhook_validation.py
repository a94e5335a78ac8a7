"""Checks every field of a WebhookService request and of CreateJobRequest.webhook; raises
INVALID_ARGUMENT naming each offending field. A URL is checked in two steps: its form (here,
with the other fields), then the addresses its host resolves to (`resolved`, async)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from media.v1 import webhook_service_pb2
from services.common import lifecycle, webhook_signing
from services.common.errors import invalid_argument
from services.common.ids import parse_uuid, uuid7
from services.common.resolver import Resolver
from services.common.sealing import Sealer
from services.common.webhook_urls import Target, UrlPolicy, UrlRefused, check_target, check_url
from services.job_service.validation import Violations
from services.job_service.webhook_store import EndpointChanges, NewEndpoint

MAX_DESCRIPTION_CHARS = 500
UPDATABLE = ("url", "event_types", "kinds", "description", "enabled")
_KINDS = frozenset(lifecycle.KIND_NAMES)
_EVENT_TYPES = frozenset(lifecycle.EVENT_TYPES)
_ECHO_CHARS = 40  # of a bad value quoted back in a message


@dataclass(frozen=True)
class ValidEndpoint:
    """The fields of a new endpoint (or a one-off job webhook), normalized."""

    target: Target
    event_types: tuple[str, ...]
    kinds: tuple[int, ...] = ()
    description: str = ""

    def endpoint(self, owner: str, sealer: Sealer, job_id: uuid.UUID | None = None) -> NewEndpoint:
        """The row to write, with a signing secret of its own (sealed for the row)."""
        secret = webhook_signing.new_secret()
        return NewEndpoint(
            id=uuid7(),
            owner=owner,
            url=self.target.url,
            event_types=self.event_types,
            secret=secret,
            sealed_secret=sealer.seal(secret),
            sealed_with=sealer.key_id,
            kinds=self.kinds,
            description=self.description,
            job_id=job_id,
        )


async def create_request(
    request: webhook_service_pb2.CreateWebhookEndpointRequest, policy: UrlPolicy, dns: Resolver
) -> ValidEndpoint:
    bad: Violations = []
    target = _url(request.url, "url", policy, bad)
    types = event_types(request.event_types, "event_types", bad)
    kinds = _kinds(request.kinds, bad)
    _description(request.description, bad)
    if bad:
        raise invalid_argument(bad)
    assert target is not None
    await resolved(target, "url", policy, dns)
    return ValidEndpoint(
        target, types or lifecycle.FINISHED_EVENT_TYPES, kinds, request.description
    )


async def job_webhook(
    hook: webhook_service_pb2.JobWebhook, policy: UrlPolicy, dns: Resolver
) -> ValidEndpoint:
    """CreateJobRequest.webhook, its fields named as in CreateJobRequest."""
    bad: Violations = []
    target = _url(hook.url, "webhook.url", policy, bad)
    types = event_types(hook.event_types, "webhook.event_types", bad)
    if bad:
        raise invalid_argument(bad)
    assert target is not None
    await resolved(target, "webhook.url", policy, dns)
    return ValidEndpoint(target, types or lifecycle.FINISHED_EVENT_TYPES)


async def update_request(
    request: webhook_service_pb2.UpdateWebhookEndpointRequest, policy: UrlPolicy, dns: Resolver
) -> tuple[uuid.UUID, EndpointChanges]:
    bad: Violations = []
    endpoint = _id(request.endpoint_id, "endpoint_id", bad)
    mask = set(request.update_mask)
    if not mask:
        bad.append(("update_mask", f"must name at least one of {', '.join(UPDATABLE)}"))
    unknown = sorted(mask - set(UPDATABLE))
    if unknown:
        bad.append(
            (
                "update_mask",
                f"unknown field {_echo(unknown[0])}; must name some of {', '.join(UPDATABLE)}",
            )
        )
    target = _url(request.url, "url", policy, bad) if "url" in mask else None
    types = event_types(request.event_types, "event_types", bad) if "event_types" in mask else None
    if types == ():
        bad.append(("event_types", "must name at least one event type"))
    kinds = _kinds(request.kinds, bad) if "kinds" in mask else None
    if "description" in mask:
        _description(request.description, bad)
    if bad:
        raise invalid_argument(bad)
    assert endpoint is not None
    if target is not None:
        await resolved(target, "url", policy, dns)
    return endpoint, EndpointChanges(
        url=target.url if target is not None else None,
        event_types=types,
        kinds=kinds,
        description=request.description if "description" in mask else None,
        enabled=request.enabled if "enabled" in mask else None,
    )


def endpoint_id(value: str) -> uuid.UUID:
    bad: Violations = []
    parsed = _id(value, "endpoint_id", bad)
    if bad:
        raise invalid_argument(bad)
    assert parsed is not None
    return parsed


def redeliver_request(
    request: webhook_service_pb2.RedeliverWebhookRequest,
) -> tuple[uuid.UUID, uuid.UUID]:
    bad: Violations = []
    endpoint = _id(request.endpoint_id, "endpoint_id", bad)
    delivery = _id(request.delivery_id, "delivery_id", bad)
    if bad:
        raise invalid_argument(bad)
    assert endpoint is not None and delivery is not None
    return endpoint, delivery


def delivery_state(value: int) -> None:
    if value not in webhook_service_pb2.DeliveryState.values():
        names = ", ".join(n for n in webhook_service_pb2.DeliveryState.keys()[1:])
        raise invalid_argument([("state", f"unknown value {value}; must be one of {names}")])


def event_types(values: Iterable[str], field: str, bad: Violations) -> tuple[str, ...]:
    """The event types in lifecycle order, duplicates collapsed (empty: none were named)."""
    named = set(values)
    unknown = sorted(named - _EVENT_TYPES)
    if unknown:
        bad.append(
            (
                field,
                f"unknown event type {_echo(unknown[0])}; must be some of "
                f"{', '.join(lifecycle.EVENT_TYPES)}",
            )
        )
    return tuple(t for t in lifecycle.EVENT_TYPES if t in named)


async def resolved(target: Target, field: str, policy: UrlPolicy, dns: Resolver) -> None:
    """Refuses a host that resolves to an address the policy does not allow (the message never
    names the address)."""
    try:
        await check_target(target, policy, dns)
    except UrlRefused as exc:
        raise invalid_argument([(field, str(exc))]) from None


def _url(value: str, field: str, policy: UrlPolicy, bad: Violations) -> Target | None:
    try:
        return check_url(value, policy)
    except UrlRefused as exc:
        bad.append((field, str(exc)))
        return None


def _kinds(values: Iterable[int], bad: Violations) -> tuple[int, ...]:
    named = set(values)
    if not named <= _KINDS:
        bad.append(("kinds", "must be MEDIA_KIND_IMAGE or MEDIA_KIND_VIDEO"))
    return tuple(sorted(named & _KINDS))


def _description(value: str, bad: Violations) -> None:
    if len(value) > MAX_DESCRIPTION_CHARS:
        bad.append(
            (
                "description",
                f"must be at most {MAX_DESCRIPTION_CHARS} characters (got {len(value)})",
            )
        )
    elif "\x00" in value:
        bad.append(("description", "must not contain NUL characters"))


def _id(value: str, field: str, bad: Violations) -> uuid.UUID | None:
    parsed = parse_uuid(value)
    if parsed is None:
        bad.append((field, "must be an ID (a UUID) that WebhookService returned"))
    return parsed


def _echo(value: str) -> str:
    return repr(value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "…")
