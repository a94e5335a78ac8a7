"""One google-genai client per generator, built lazily inside the event loop, and the way every
API call is made through it (retried and scrubbed alike).

Building it may need application-default credentials, which can block on a metadata server, so
they are loaded in a worker thread on first use. The same credentials sign Cloud Storage downloads
of Veo outputs written to VIDEO_OUTPUT_GCS_URI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypedDict, TypeVar

import google.auth
import google.auth.credentials
import google.auth.transport.requests
from google import genai
from google.genai import types

from media.v1 import job_pb2
from services.media_worker.generators.base import GenerationError
from services.media_worker.generators.google_errors import (
    RetryPolicy,
    Scrubber,
    call_with_retries,
    classify,
)
from services.media_worker.generators.google_settings import (
    DEFAULT_VERTEX_LOCATION,
    DEVELOPER_API_VERSION,
    GoogleSettings,
)

T = TypeVar("T")
ErrorCode = job_pb2.ErrorCode
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

VERTEX_SETTINGS_HINT = (
    "set GOOGLE_GENAI_USE_VERTEXAI=true with GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION "
    "(application-default credentials) or with a Vertex AI API key (express mode)"
)


class _ClientArgs(TypedDict, total=False):
    """The arguments of genai.Client that _build passes."""

    vertexai: bool
    http_options: types.HttpOptions
    api_key: str
    credentials: google.auth.credentials.Credentials
    project: str
    location: str


class ClientFactory:
    def __init__(
        self,
        settings: GoogleSettings,
        *,
        credentials: google.auth.credentials.Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.scrub = Scrubber([settings.api_key])
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            base_delay_seconds=settings.retry_base_delay_seconds,
            max_delay_seconds=settings.retry_max_delay_seconds,
        )
        self._credentials = credentials  # tests pass static ones; else ADC on first use
        self._project = settings.project
        self._client: genai.Client | None = None
        self._lock = asyncio.Lock()

    async def call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Runs one API call (or download) of `what`, retrying transient failures; every failure
        it understands becomes a GenerationError without credentials in its message."""
        return await call_with_retries(call, policy=self.policy, scrub=self.scrub, what=what)

    def require_vertex(self, model: str, family: str) -> None:
        """Imagen and Veo are served only through Vertex AI by google-genai 3.x."""
        if not self.settings.use_vertexai:
            raise GenerationError(
                ErrorCode.ERROR_CODE_CONFIGURATION,
                f"{family} model {model} is served only through Vertex AI by google-genai, and "
                f"this worker uses the Gemini Developer API: {VERTEX_SETTINGS_HINT}",
            )

    async def client(self) -> genai.Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._build()
            return self._client

    async def _build(self) -> genai.Client:
        settings = self.settings
        api_version = None  # Vertex AI: the SDK's (v1beta1, or GOOGLE_GENAI_API_VERSION)
        if not settings.use_vertexai:
            wanted = settings.api_version
            api_version = wanted if wanted and wanted != "beta" else DEVELOPER_API_VERSION
        http_options = types.HttpOptions(
            timeout=int(settings.request_timeout_seconds * 1000),  # milliseconds
            base_url=settings.base_url or None,
            api_version=api_version,
        )
        kwargs: _ClientArgs = {"vertexai": settings.use_vertexai, "http_options": http_options}
        try:
            if not settings.use_vertexai:
                if not settings.api_key:
                    raise GenerationError(
                        ErrorCode.ERROR_CODE_CONFIGURATION,
                        "the Gemini Developer API needs GEMINI_API_KEY or GOOGLE_API_KEY; "
                        f"for Vertex AI {VERTEX_SETTINGS_HINT}",
                    )
                kwargs["api_key"] = settings.api_key
            elif settings.vertex_auth == "api_key":
                kwargs["api_key"] = settings.api_key
            else:
                kwargs["credentials"] = await self.credentials()
                if not self._project:
                    raise GenerationError(
                        ErrorCode.ERROR_CODE_CONFIGURATION,
                        "GOOGLE_CLOUD_PROJECT is not set and the application-default "
                        "credentials name no project",
                    )
                kwargs["project"] = self._project
                kwargs["location"] = settings.location or DEFAULT_VERTEX_LOCATION
            # The constructor reads CA bundles from disk: keep it off the event loop.
            return await asyncio.to_thread(lambda: genai.Client(**kwargs))
        except GenerationError:
            raise
        except Exception as exc:
            error = classify(exc, self.scrub, "configuring google-genai")
            if error is None:
                raise
            raise GenerationError(
                ErrorCode.ERROR_CODE_CONFIGURATION, error.message, retryable=False
            ) from None

    async def credentials(self) -> google.auth.credentials.Credentials:
        if self._credentials is None:
            credentials, project = await asyncio.to_thread(
                google.auth.default, scopes=[CLOUD_PLATFORM_SCOPE]
            )
            self._credentials = credentials
            self._project = self._project or project or ""
        return self._credentials

    async def access_token(self) -> str:
        """A fresh OAuth token of the client's credentials (for Cloud Storage downloads)."""
        credentials = await self.credentials()
        if not credentials.valid:
            request = google.auth.transport.requests.Request()
            await asyncio.to_thread(credentials.refresh, request)
        return str(credentials.token)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aio.aclose()
            self._client = None
