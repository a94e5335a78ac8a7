"""The Google generator: Gemini image models, Imagen and Veo through the google-genai SDK.

Both SDK backends work: the Gemini Developer API (API key) and Vertex AI (project and location
with application-default credentials, or express mode with an API key). Gemini image models run
on either; Imagen and Veo are served only through Vertex AI by google-genai 3.x, so a job for them
on a Developer API configuration fails at once with ERROR_CODE_CONFIGURATION. Everything runs on
the SDK's async client (client.aio); Pillow work and file writes go to threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator

import google.auth.credentials

from media.v1 import job_pb2
from services.media_worker.generators.base import (
    GenerationContext,
    GenerationError,
    GenerationResult,
    KeepAliveFn,
)
from services.media_worker.generators.google_client import ClientFactory
from services.media_worker.generators.google_errors import RetryPolicy
from services.media_worker.generators.google_images import ImageGenerator
from services.media_worker.generators.google_settings import GoogleSettings
from services.media_worker.generators.google_videos import VideoGenerator

__all__ = ["GoogleGenerator", "GoogleSettings", "build_generator"]

log = logging.getLogger(__name__)
ErrorCode = job_pb2.ErrorCode


@contextlib.asynccontextmanager
async def keeping_alive(keep_alive: KeepAliveFn, interval: float) -> AsyncIterator[None]:
    """Calls keep_alive every `interval` seconds while the body runs (API calls, backoff sleeps,
    polls and downloads can each outlast the consumer's ack wait)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await keep_alive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the generation itself decides the job's fate
                log.warning("keep-alive failed: %s", exc)

    task = asyncio.create_task(beat(), name="google-generator-keepalive")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class GoogleGenerator:
    name = "google"

    def __init__(
        self,
        settings: GoogleSettings,
        *,
        credentials: google.auth.credentials.Credentials | None = None,
    ) -> None:
        self.settings = settings
        self._factory = ClientFactory(settings, credentials=credentials)
        policy = RetryPolicy(
            attempts=settings.retry_attempts,
            base_delay_seconds=settings.retry_base_delay_seconds,
            max_delay_seconds=settings.retry_max_delay_seconds,
        )
        self._images = ImageGenerator(self._factory, policy, settings.default_image_model)
        self._videos = VideoGenerator(self._factory, policy, settings)

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        kind = ctx.dispatch.WhichOneof("params")
        async with keeping_alive(ctx.keep_alive, self.settings.keepalive_interval_seconds):
            try:
                if kind == "image":
                    return await self._images.generate(ctx)
                if kind == "video":
                    return await self._videos.generate(ctx)
            except (GenerationError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # A bug or an SDK surprise: keep the traceback in the log, scrubbed of secrets,
                # and give the job a message that cannot leak the API key either.
                scrub = self._factory.scrub
                trace = "".join(traceback.format_exception(exc))
                log.error("google generator failed: %s", scrub(trace, limit=None))
                raise GenerationError(
                    ErrorCode.ERROR_CODE_INTERNAL,
                    scrub(f"unexpected {type(exc).__name__}: {exc}"),
                ) from None
        raise GenerationError(
            ErrorCode.ERROR_CODE_INVALID_REQUEST,
            f"the dispatch has no image or video params ({kind})",
        )

    async def aclose(self) -> None:
        """Closes the SDK's HTTP connections (call on worker shutdown)."""
        await self._factory.aclose()


def build_generator(
    settings: object | None = None,
    *,
    google_settings: GoogleSettings | None = None,
    credentials: google.auth.credentials.Credentials | None = None,
) -> GoogleGenerator:
    """The worker's entry point. The generator reads its own settings from the environment; the
    worker's `settings`, when given, supply the default models so that both agree. Tests pass
    `google_settings` and static `credentials` instead."""
    resolved = google_settings or GoogleSettings.from_env()
    overrides = {
        name: value
        for name in ("default_image_model", "default_video_model")
        if isinstance(value := getattr(settings, name, None), str) and value
    }
    if overrides and google_settings is None:
        resolved = dataclasses.replace(resolved, **overrides)
    log.info("google generator: %s", resolved.describe())
    return GoogleGenerator(resolved, credentials=credentials)
