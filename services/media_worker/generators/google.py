"""The Google generator: Gemini image models, Imagen and Veo through the google-genai SDK.

Both SDK backends work: the Gemini Developer API (API key) and Vertex AI (project and location
with application-default credentials, or express mode with an API key). Gemini image models run
on either; Imagen and Veo are served only through Vertex AI by google-genai 3.x, so a job for them
on a Developer API configuration fails at once with ERROR_CODE_CONFIGURATION. Everything runs on
the SDK's async client (client.aio); Pillow work and file writes go to threads.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

import google.auth.credentials

from media.v1 import job_pb2
from services.media_worker.generators.base import (
    GenerationContext,
    GenerationError,
    GenerationResult,
)
from services.media_worker.generators.google_client import ClientFactory
from services.media_worker.generators.google_images import ImageGenerator
from services.media_worker.generators.google_settings import GoogleSettings
from services.media_worker.generators.google_videos import VideoGenerator
from services.media_worker.settings import WorkerSettings

__all__ = ["GoogleGenerator", "GoogleSettings", "build_generator"]

log = logging.getLogger(__name__)
ErrorCode = job_pb2.ErrorCode


class GoogleGenerator:
    name = "google"

    def __init__(self, factory: ClientFactory) -> None:
        self.settings = factory.settings
        self._factory = factory
        self._images = ImageGenerator(factory)
        self._videos = VideoGenerator(factory)

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        kind = ctx.dispatch.WhichOneof("params")
        # The message stays alive on the worker's own timer (keepalive.py) however long the API
        # calls, backoff sleeps and polls take.
        try:
            if kind == "image":
                return await self._images.generate(ctx)
            if kind == "video":
                return await self._videos.generate(ctx)
        except (GenerationError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # A bug or an SDK surprise: keep the traceback in the log, scrubbed of secrets,
            # and give the job a message without the exception's text, which may name keys,
            # endpoints or paths.
            scrub = self._factory.scrub
            trace = "".join(traceback.format_exception(exc))
            log.error("google generator failed: %s", scrub(trace, limit=None))
            raise GenerationError(
                ErrorCode.ERROR_CODE_INTERNAL,
                f"the Google generator failed unexpectedly ({type(exc).__name__})",
            ) from None
        raise GenerationError(
            ErrorCode.ERROR_CODE_INVALID_REQUEST,
            f"the dispatch has no image or video params ({kind})",
        )

    async def aclose(self) -> None:
        """Closes the SDK's HTTP connections (call on worker shutdown)."""
        await self._factory.aclose()


def build_generator(
    settings: WorkerSettings | GoogleSettings,
    *,
    credentials: google.auth.credentials.Credentials | None = None,
) -> GoogleGenerator:
    """The worker passes its settings: the Google settings are then read from the environment,
    with the default models the worker's settings read. Tests pass GoogleSettings to use as they
    are, and static `credentials`."""
    if not isinstance(settings, GoogleSettings):
        settings = GoogleSettings.from_env(
            default_image_model=settings.default_image_model,
            default_video_model=settings.default_video_model,
        )
    log.info("google generator: %s", settings.describe())
    return GoogleGenerator(ClientFactory(settings, credentials=credentials))
