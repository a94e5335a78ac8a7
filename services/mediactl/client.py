"""Where the services are, how to reach them, and how their errors read."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, cast

import grpc
from google.protobuf.message import Message

from media.v1 import job_service_pb2 as pb
from media.v1 import (
    job_service_pb2_grpc,
    notifications_pb2,
    notifications_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)
from services.common.auth import bearer_metadata
from services.common.config import SettingsError
from services.common.errors import field_violations
from services.common.server import channel_options
from services.common.tls import sync_channel
from services.mediactl.settings import (
    JOB_SERVICE_ENV,
    NOTIFIER_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    CliSettings,
)
from services.mediactl.tokens import FileToken, StaticToken, TokenError, TokenSource

# UNAVAILABLE means the call never reached a handler or the connection broke, so a retry is safe
# for reads, for CreateJob because its request_id makes a repeat return the first job, and for
# CreateInputUpload (a repeat makes an upload that is never used, and swept).
# CancelJob is left out: a lost response followed by a retry would report FAILED_PRECONDITION;
# so are the webhook calls that create, delete, rotate or redeliver (a repeat would do it twice or
# report NOT_FOUND) and MarkNotificationsRead (a repeat would report 0 marked). An update sets
# state, so a repeat is harmless.
_RETRIED = {
    "media.v1.JobService": ("CreateJob", "GetJob", "ListJobs", "CreateInputUpload"),
    "media.v1.WebhookService": (
        "ListWebhookEndpoints",
        "GetWebhookEndpoint",
        "UpdateWebhookEndpoint",
        "ListWebhookDeliveries",
    ),
    "media.v1.NotificationService": ("ListNotifications",),
}
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in _RETRIED.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class ConfigError(Exception):
    """A setting the command needs is missing (shown without a traceback)."""


class _Calls:
    """Calls on one channel, each with the command's token and deadline."""

    def __init__(
        self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], timeout: float
    ) -> None:
        self._metadata = metadata
        self._timeout = timeout

    def _call(self, method: Callable[..., object], request: Message) -> object:
        return method(request, metadata=self._metadata, timeout=self._timeout)


class JobService(_Calls):
    """job_service's JobService calls."""

    def __init__(
        self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], timeout: float
    ) -> None:
        super().__init__(channel, metadata, timeout)
        self._stub = job_service_pb2_grpc.JobServiceStub(channel)

    def create(self, request: pb.CreateJobRequest) -> pb.CreateJobResponse:
        return cast(pb.CreateJobResponse, self._call(self._stub.CreateJob, request))

    def create_input_upload(self, mime_type: str, byte_size: int) -> pb.CreateInputUploadResponse:
        request = pb.CreateInputUploadRequest(mime_type=mime_type, byte_size=byte_size)
        return cast(pb.CreateInputUploadResponse, self._call(self._stub.CreateInputUpload, request))

    def get(self, job_id: str) -> pb.GetJobResponse:
        request = pb.GetJobRequest(job_id=job_id)
        return cast(pb.GetJobResponse, self._call(self._stub.GetJob, request))

    def list(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return cast(pb.ListJobsResponse, self._call(self._stub.ListJobs, request))

    def cancel(self, job_id: str) -> pb.CancelJobResponse:
        request = pb.CancelJobRequest(job_id=job_id)
        return cast(pb.CancelJobResponse, self._call(self._stub.CancelJob, request))


class WebhookService(_Calls):
    """job_service's WebhookService calls."""

    def __init__(
        self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], timeout: float
    ) -> None:
        super().__init__(channel, metadata, timeout)
        self._stub = webhook_service_pb2_grpc.WebhookServiceStub(channel)

    def create(
        self, request: webhook_service_pb2.CreateWebhookEndpointRequest
    ) -> webhook_service_pb2.CreateWebhookEndpointResponse:
        return cast(
            webhook_service_pb2.CreateWebhookEndpointResponse,
            self._call(self._stub.CreateWebhookEndpoint, request),
        )

    def list(
        self, request: webhook_service_pb2.ListWebhookEndpointsRequest
    ) -> webhook_service_pb2.ListWebhookEndpointsResponse:
        return cast(
            webhook_service_pb2.ListWebhookEndpointsResponse,
            self._call(self._stub.ListWebhookEndpoints, request),
        )

    def update(
        self, request: webhook_service_pb2.UpdateWebhookEndpointRequest
    ) -> webhook_service_pb2.UpdateWebhookEndpointResponse:
        return cast(
            webhook_service_pb2.UpdateWebhookEndpointResponse,
            self._call(self._stub.UpdateWebhookEndpoint, request),
        )

    def delete(self, endpoint_id: str) -> webhook_service_pb2.DeleteWebhookEndpointResponse:
        request = webhook_service_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
        return cast(
            webhook_service_pb2.DeleteWebhookEndpointResponse,
            self._call(self._stub.DeleteWebhookEndpoint, request),
        )

    def rotate(self, endpoint_id: str) -> webhook_service_pb2.RotateWebhookSecretResponse:
        request = webhook_service_pb2.RotateWebhookSecretRequest(endpoint_id=endpoint_id)
        return cast(
            webhook_service_pb2.RotateWebhookSecretResponse,
            self._call(self._stub.RotateWebhookSecret, request),
        )

    def deliveries(
        self, request: webhook_service_pb2.ListWebhookDeliveriesRequest
    ) -> webhook_service_pb2.ListWebhookDeliveriesResponse:
        return cast(
            webhook_service_pb2.ListWebhookDeliveriesResponse,
            self._call(self._stub.ListWebhookDeliveries, request),
        )

    def redeliver(
        self, endpoint_id: str, delivery_id: str
    ) -> webhook_service_pb2.RedeliverWebhookResponse:
        request = webhook_service_pb2.RedeliverWebhookRequest(
            endpoint_id=endpoint_id, delivery_id=delivery_id
        )
        return cast(
            webhook_service_pb2.RedeliverWebhookResponse,
            self._call(self._stub.RedeliverWebhook, request),
        )


class NotificationService(_Calls):
    """job_service's NotificationService calls."""

    def __init__(
        self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], timeout: float
    ) -> None:
        super().__init__(channel, metadata, timeout)
        self._stub = notifications_pb2_grpc.NotificationServiceStub(channel)

    def list(
        self, request: notifications_pb2.ListNotificationsRequest
    ) -> notifications_pb2.ListNotificationsResponse:
        return cast(
            notifications_pb2.ListNotificationsResponse,
            self._call(self._stub.ListNotifications, request),
        )

    def mark_read(
        self, request: notifications_pb2.MarkNotificationsReadRequest
    ) -> notifications_pb2.MarkNotificationsReadResponse:
        return cast(
            notifications_pb2.MarkNotificationsReadResponse,
            self._call(self._stub.MarkNotificationsRead, request),
        )


_Service = TypeVar("_Service", bound=_Calls)


@dataclass(frozen=True)
class Connection:
    """Addresses and credentials from flags, falling back to the settings (the environment)."""

    settings: CliSettings
    job_addr: str
    notifier_addr: str
    token: str = field(repr=False)
    token_file: str  # used when no token is given as such
    timeout: float  # deadline of each unary call, in seconds
    tls: bool

    @classmethod
    def resolve(
        cls,
        settings: CliSettings,
        *,
        addr: str | None,
        notifier_addr: str | None,
        token: str | None,
        timeout: float,
        tls: bool,
        token_file: str | None = None,
    ) -> Connection:
        # A flag beats the environment; of two flags (or two variables), the token itself wins.
        if token or token_file:
            token, token_file = token or "", "" if token else token_file
        else:
            token, token_file = settings.token, settings.token_file
        return cls(
            settings=settings,
            job_addr=(addr or settings.job_addr).strip(),
            notifier_addr=(notifier_addr or settings.notifier_addr).strip(),
            token=(token or "").strip(),
            token_file=(token_file or "").strip(),
            timeout=timeout,
            tls=tls,
        )

    def require_job_service(self) -> str:
        if not self.job_addr:
            raise ConfigError(f"no job service address: set {JOB_SERVICE_ENV} or pass --addr")
        return self.job_addr

    def require_notifier(self) -> str:
        if not self.notifier_addr:
            raise ConfigError(f"no notifier address: set {NOTIFIER_ENV} or pass --notifier-addr")
        return self.notifier_addr

    def tokens(self) -> TokenSource:
        """The token, or the token file (read now, and again when a stream's token expires)."""
        source: TokenSource
        if self.token:
            source = StaticToken(self.token)
        elif self.token_file:
            source = FileToken(Path(self.token_file))
        else:
            raise ConfigError(
                f"no token: set {TOKEN_ENV} or pass --token (or a file: {TOKEN_FILE_ENV}, "
                "--token-file; see `mediactl token`)"
            )
        try:
            source.current()  # an unreadable file is a setting to fix, said before any call
        except TokenError as exc:
            raise ConfigError(str(exc)) from None
        return source

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.tokens().current())

    def channel(self, addr: str) -> grpc.Channel:
        options = [
            *channel_options(self.settings.max_message_bytes),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.primary_user_agent", "mediactl"),
        ]
        # --tls turns TLS on with the system's roots; TLS_CA_FILE and TLS_CLIENT_CERT_FILE /
        # TLS_CLIENT_KEY_FILE (mutual TLS) imply it.
        tls = self.settings.tls
        tls = dataclasses.replace(tls, enabled=tls.enabled or self.tls)
        try:
            return sync_channel(addr, tls, options=options)
        except SettingsError as exc:  # an unreadable certificate file
            raise ConfigError(str(exc)) from None

    @contextlib.contextmanager
    def _on_job_service(self, service: type[_Service]) -> Iterator[_Service]:
        """One of job_service's services for the command's calls (the address and token are
        checked first)."""
        addr = self.require_job_service()
        metadata = self.metadata()
        with self.channel(addr) as channel:
            yield service(channel, metadata, self.timeout)

    def job_service(self) -> contextlib.AbstractContextManager[JobService]:
        return self._on_job_service(JobService)

    def webhooks(self) -> contextlib.AbstractContextManager[WebhookService]:
        return self._on_job_service(WebhookService)

    def notifications(self) -> contextlib.AbstractContextManager[NotificationService]:
        return self._on_job_service(NotificationService)


def describe_rpc_error(error: grpc.RpcError) -> list[str]:
    """`error: <CODE>: <message>`, then one indented line per BadRequest field violation."""
    call = cast(grpc.Call, error)
    lines = [f"error: {call.code().name}: {call.details() or ''}"]
    try:
        violations = field_violations(error)
    except ValueError:  # details that contradict the status: show the status alone
        violations = []
    lines += [f"  {field}: {description}" for field, description in violations]
    return lines


class _PagedRequest(Protocol):
    page_token: str


class _PagedResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


_Request = TypeVar("_Request", bound=_PagedRequest)
_Response = TypeVar("_Response", bound=_PagedResponse)
_Item = TypeVar("_Item")


def list_pages(
    call: Callable[[_Request], _Response],
    request: _Request,
    items: Callable[[_Response], Iterable[_Item]],
    *,
    all_pages: bool = True,
) -> tuple[list[_Item], str]:
    """The items of one page, or of every page from there on; and the next page's token (empty
    once every page is read)."""
    found: list[_Item] = []
    seen_tokens: set[str] = set()
    while True:
        response = call(request)
        found.extend(items(response))
        token = response.next_page_token
        # A token seen before would loop forever; stop rather than trust it.
        if not all_pages or not token or token in seen_tokens:
            return found, "" if all_pages else token
        seen_tokens.add(token)
        request.page_token = token
