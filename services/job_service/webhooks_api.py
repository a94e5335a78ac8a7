"""WebhookService: the caller's webhook endpoints and their deliveries. Every call is
authenticated; another user's endpoint (or delivery) answers NOT_FOUND. A signing secret is
returned by CreateWebhookEndpoint and RotateWebhookSecret alone, never listed or logged."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from media.v1 import webhook_service_pb2 as pb
from media.v1 import webhook_service_pb2_grpc
from services.common import webhook_signing
from services.common.auth import TokenVerifier
from services.common.errors import RpcError, failed_precondition, invalid_argument, not_found
from services.common.resolver import Resolver
from services.job_service import pages, validation, webhook_validation
from services.job_service.database import call
from services.job_service.settings import Limits, WebhookSettings
from services.job_service.webhook_store import (
    EndpointDisabled,
    TooManyEndpoints,
    WebhookStore,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# What a ListWebhookDeliveries response keeps free of deliveries within the message limit.
_LIST_RESPONSE_ROOM = 16 * 1024


class WebhooksApi(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(
        self,
        store: WebhookStore,
        verifier: TokenVerifier,
        limits: Limits,
        settings: WebhookSettings,
        dns: Resolver,
    ) -> None:
        self._store = store
        self._verifier = verifier
        self._limits = limits
        self._settings = settings
        self._dns = dns

    async def _owner(self, context: Context) -> str:
        return (await self._verifier.identify(context.invocation_metadata())).subject

    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Context
    ) -> pb.CreateWebhookEndpointResponse:
        owner = await self._owner(context)
        valid = await webhook_validation.create_request(
            request, self._settings.url_policy, self._dns
        )
        new = valid.endpoint(owner, self._settings.sealer)
        try:
            endpoint = await call(self._store.create, new)
        except TooManyEndpoints:
            cap = self._settings.max_endpoints_per_user
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many webhook endpoints: at most {cap} per user "
                "(MAX_WEBHOOK_ENDPOINTS_PER_USER); delete one first",
            ) from None
        log.info("webhook endpoint created", extra={"endpoint_id": endpoint.id})
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint, secret=new.secret)

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Context
    ) -> pb.ListWebhookEndpointsResponse:
        owner = await self._owner(context)
        bad: validation.Violations = []
        size = validation.page_size(request.page_size, self._limits, bad)
        if bad:
            raise invalid_argument(bad)
        before = pages.decode(request.page_token, call="ListWebhookEndpoints")
        # One extra row tells whether another page exists.
        found = await call(self._store.list_endpoints, owner, limit=size + 1, before=before)
        response = pb.ListWebhookEndpointsResponse(endpoints=found[:size])
        if len(found) > size:
            response.next_page_token = pages.encode(found[size - 1].id)
        return response

    async def GetWebhookEndpoint(
        self, request: pb.GetWebhookEndpointRequest, context: Context
    ) -> pb.GetWebhookEndpointResponse:
        owner = await self._owner(context)
        endpoint_id = webhook_validation.endpoint_id(request.endpoint_id)
        endpoint = await call(self._store.get, owner, endpoint_id)
        if endpoint is None:
            raise _no_endpoint(request.endpoint_id)
        return pb.GetWebhookEndpointResponse(endpoint=endpoint)

    async def UpdateWebhookEndpoint(
        self, request: pb.UpdateWebhookEndpointRequest, context: Context
    ) -> pb.UpdateWebhookEndpointResponse:
        owner = await self._owner(context)
        endpoint_id, changes = await webhook_validation.update_request(
            request, self._settings.url_policy, self._dns
        )
        endpoint = await call(self._store.update, owner, endpoint_id, changes)
        if endpoint is None:
            raise _no_endpoint(request.endpoint_id)
        log.info("webhook endpoint updated", extra={"endpoint_id": endpoint.id})
        return pb.UpdateWebhookEndpointResponse(endpoint=endpoint)

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Context
    ) -> pb.DeleteWebhookEndpointResponse:
        owner = await self._owner(context)
        endpoint_id = webhook_validation.endpoint_id(request.endpoint_id)
        if not await call(self._store.delete, owner, endpoint_id):
            raise _no_endpoint(request.endpoint_id)
        log.info("webhook endpoint deleted", extra={"endpoint_id": request.endpoint_id})
        return pb.DeleteWebhookEndpointResponse()

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Context
    ) -> pb.RotateWebhookSecretResponse:
        owner = await self._owner(context)
        endpoint_id = webhook_validation.endpoint_id(request.endpoint_id)
        secret = webhook_signing.new_secret()
        sealer = self._settings.sealer
        endpoint = await call(
            self._store.rotate, owner, endpoint_id, sealer.seal(secret), sealer.key_id
        )
        if endpoint is None:
            raise _no_endpoint(request.endpoint_id)
        log.info("webhook secret rotated", extra={"endpoint_id": endpoint.id})
        return pb.RotateWebhookSecretResponse(endpoint=endpoint, secret=secret)

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        owner = await self._owner(context)
        bad: validation.Violations = []
        size = validation.page_size(request.page_size, self._limits, bad)
        if bad:
            raise invalid_argument(bad)
        endpoint_id = webhook_validation.endpoint_id(request.endpoint_id)
        webhook_validation.delivery_state(request.state)
        filters = (request.endpoint_id, request.state)
        before = pages.decode(request.page_token, *filters, call="ListWebhookDeliveries")
        found = await call(
            self._store.deliveries,
            owner,
            endpoint_id,
            limit=size + 1,
            before=before,
            state=request.state,
        )
        if found is None:
            raise _no_endpoint(request.endpoint_id)
        # Redeliveries add attempts without end: a page ends early rather than go over the
        # message limit.
        page = pages.fitting(found[:size], self._limits.max_message_bytes - _LIST_RESPONSE_ROOM)
        response = pb.ListWebhookDeliveriesResponse(deliveries=page)
        if len(found) > len(page):
            response.next_page_token = pages.encode(page[-1].id, *filters)
        return response

    async def RedeliverWebhook(
        self, request: pb.RedeliverWebhookRequest, context: Context
    ) -> pb.RedeliverWebhookResponse:
        owner = await self._owner(context)
        endpoint_id, delivery_id = webhook_validation.redeliver_request(request)
        try:
            delivery = await call(self._store.redeliver, owner, endpoint_id, delivery_id)
        except EndpointDisabled:
            raise failed_precondition(
                f"webhook endpoint {request.endpoint_id} is disabled; enable it first "
                "(UpdateWebhookEndpoint with enabled = true)"
            ) from None
        if delivery is None:
            raise not_found(f"delivery {request.delivery_id} of webhook endpoint")
        log.info("webhook redelivery asked", extra={"delivery_id": delivery.id})
        return pb.RedeliverWebhookResponse(delivery=delivery)


def _no_endpoint(endpoint_id: str) -> RpcError:
    return not_found(f"webhook endpoint {endpoint_id}")
