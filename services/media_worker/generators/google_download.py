"""Saving a generated video to a local file, streaming when it lives behind a URI.

Vertex AI returns video bytes inline, or a gs:// URI when the request named a storageUri; the
Developer API returns an https URI of its Files API. URIs are streamed to disk chunk by chunk so a
large video is never held in memory twice.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx2
from google.genai import errors as genai_errors
from google.genai import types

from media.v1 import job_pb2
from services.media_worker.generators.base import GenerationError
from services.media_worker.generators.google_client import ClientFactory

ErrorCode = job_pb2.ErrorCode
log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
GCS_ENDPOINT = "https://storage.googleapis.com"
DEVELOPER_API_HOST = "generativelanguage.googleapis.com"


def gcs_media_url(uri: str, endpoint: str) -> str:
    """The Cloud Storage JSON API download URL of gs://bucket/object."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not bucket or not name:
        log.warning("malformed Cloud Storage URI %s", uri)
        # Not the URI itself: it names the operator's bucket.
        raise GenerationError(ErrorCode.ERROR_CODE_NO_MEDIA, "a malformed Cloud Storage URI")
    base = endpoint or GCS_ENDPOINT
    if "://" not in base:  # STORAGE_EMULATOR_HOST may be host:port only
        base = f"http://{base}"
    quoted = urllib.parse.quote(name, safe="")
    return f"{base.rstrip('/')}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media"


async def stream_to_file(
    url: str,
    headers: dict[str, str],
    path: Path,
    read_timeout: float,
    scrub: Callable[[str], str],
) -> int:
    """GETs url into path chunk by chunk; an HTTP error raises the SDK's APIError (its body,
    passed through `scrub`, is logged)."""
    async with (
        httpx2.AsyncClient(timeout=read_timeout, follow_redirects=True) as http,
        http.stream("GET", url, headers=headers) as response,
    ):
        if response.status_code != 200:
            body = (await response.aread()).decode("utf-8", "replace")
            # The body of a storage error names buckets and objects: logged, not in the job's
            # message (which the API error's status text makes).
            log.warning(
                "video download answered HTTP %d: %s", response.status_code, scrub(body[:300])
            )
            genai_errors.APIError.raise_error(
                response.status_code, {"status": response.reason_phrase}, None
            )
        handle = await asyncio.to_thread(path.open, "wb")
        written = 0
        try:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                await asyncio.to_thread(handle.write, chunk)
                written += len(chunk)
        finally:
            await asyncio.to_thread(handle.close)
        return written


class VideoDownloader:
    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory

    async def save(self, video: types.Video, path: Path, model: str) -> None:
        if video.video_bytes:
            await asyncio.to_thread(path.write_bytes, video.video_bytes)
            return
        uri = video.uri or ""
        if not uri:
            raise GenerationError(
                ErrorCode.ERROR_CODE_NO_MEDIA, f"{model} returned a video without bytes or URI"
            )
        settings = self._factory.settings
        headers: dict[str, str] = {}
        if uri.startswith("gs://"):
            url = gcs_media_url(uri, settings.storage_endpoint_url)
            headers["Authorization"] = f"Bearer {await self._factory.access_token()}"
        elif uri.startswith(("https://", "http://")):
            url = uri
            # The API key goes only to the API's own host, never to wherever a URI points.
            api_host = urllib.parse.urlsplit(settings.base_url).netloc or DEVELOPER_API_HOST
            if settings.api_key and urllib.parse.urlsplit(uri).netloc == api_host:
                headers["x-goog-api-key"] = settings.api_key
        else:
            raise GenerationError(
                ErrorCode.ERROR_CODE_NO_MEDIA,
                f"{model} returned a video at an unsupported URI scheme: {uri.split(':')[0]}",
            )
        await self._factory.call(
            lambda: stream_to_file(
                url, headers, path, settings.request_timeout_seconds, self._factory.scrub
            ),
            f"downloading a {model} video",
        )
