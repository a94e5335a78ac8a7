"""Videos from Veo (generate_videos), a long-running operation polled until done.

While the operation runs, progress is reported as elapsed time against the model's usual time
(an estimate: Veo reports no progress of its own), the poll interval backs off from
VIDEO_POLL_INITIAL_SECONDS to VIDEO_POLL_MAX_SECONDS, and the whole wait is bounded by
VIDEO_DEADLINE_SECONDS. Missing a deadline is not retried: a retry would start (and bill) a new
generation while the old one may still be running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from dataclasses import dataclass, field

from google import genai
from google.genai import types

from media.v1 import job_pb2
from services.media_worker.generators.base import (
    GeneratedFile,
    GenerationContext,
    GenerationError,
    GenerationResult,
)
from services.media_worker.generators.google_client import ClientFactory
from services.media_worker.generators.google_download import VideoDownloader
from services.media_worker.generators.google_errors import Scrubber, looks_like_safety
from services.media_worker.generators.google_images import input_mime_type, model_id

log = logging.getLogger(__name__)
ErrorCode = job_pb2.ErrorCode

ASPECT_RATIOS = {
    job_pb2.ASPECT_RATIO_UNSPECIFIED: "16:9",
    job_pb2.ASPECT_RATIO_16_9: "16:9",
    job_pb2.ASPECT_RATIO_9_16: "9:16",
}
PERSON_GENERATION = {
    job_pb2.PERSON_GENERATION_DONT_ALLOW: "dont_allow",
    job_pb2.PERSON_GENERATION_ALLOW_ADULT: "allow_adult",
    job_pb2.PERSON_GENERATION_ALLOW_ALL: "allow_all",
}
DEFAULT_DURATION = 8
# Typical wall time of one generation, for progress only (first match wins).
EXPECTED_SECONDS = (
    ("veo-3.1-fast", 50.0),
    ("veo-3.0-fast", 50.0),
    ("veo-3", 90.0),
    ("veo-2", 60.0),
)
DEFAULT_EXPECTED_SECONDS = 90.0
POLL_BACKOFF = 1.5
# google.rpc.Code of a failed operation -> (error code, retryable)
OPERATION_ERRORS = {
    3: (ErrorCode.ERROR_CODE_INVALID_REQUEST, False),  # INVALID_ARGUMENT
    4: (ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),  # DEADLINE_EXCEEDED
    7: (ErrorCode.ERROR_CODE_CONFIGURATION, False),  # PERMISSION_DENIED
    8: (ErrorCode.ERROR_CODE_RATE_LIMITED, True),  # RESOURCE_EXHAUSTED
    9: (ErrorCode.ERROR_CODE_INVALID_REQUEST, False),  # FAILED_PRECONDITION
    13: (ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),  # INTERNAL
    14: (ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, True),  # UNAVAILABLE
    16: (ErrorCode.ERROR_CODE_CONFIGURATION, False),  # UNAUTHENTICATED
}


def supported_durations(model: str) -> tuple[int, ...]:
    return (5, 6, 7, 8) if model_id(model).startswith("veo-2") else (4, 6, 8)


def expected_seconds(model: str) -> float:
    name = model_id(model)
    for prefix, seconds in EXPECTED_SECONDS:
        if name.startswith(prefix):
            return seconds
    return DEFAULT_EXPECTED_SECONDS


def progress_at(elapsed: float, expected: float) -> int:
    """5..89: about 70 at the expected time, then creeping on (never reaching 90)."""
    fraction = 1 - math.exp(-1.6 * elapsed / expected)
    return 5 + min(84, int(85 * fraction))


@dataclass(frozen=True)
class VideoPlan:
    model: str
    prompt: str
    negative_prompt: str
    aspect_ratio: str
    duration: int
    count: int
    person_generation: str | None
    notes: list[str] = field(default_factory=list)


def plan_video(params: job_pb2.VideoParams, default_model: str) -> VideoPlan:
    model = params.model.strip() or default_model
    if not model_id(model).startswith("veo"):
        raise GenerationError(
            ErrorCode.ERROR_CODE_INVALID_REQUEST, f"{model} is not a Veo video model"
        )
    notes: list[str] = []
    requested = params.duration_seconds or DEFAULT_DURATION
    allowed = supported_durations(model)
    duration = requested
    if requested not in allowed:
        longer = [d for d in allowed if d >= requested]
        duration = min(longer) if longer else max(allowed)
        offered = ", ".join(str(d) for d in allowed)
        notes.append(
            f"{model_id(model)} makes videos of {offered} seconds; "
            f"made {duration} s instead of {requested} s"
        )
    return VideoPlan(
        model=model,
        prompt=params.prompt.strip(),
        negative_prompt=params.negative_prompt.strip(),
        aspect_ratio=ASPECT_RATIOS.get(params.aspect_ratio, "16:9"),
        duration=duration,
        count=max(1, params.number_of_videos),
        person_generation=PERSON_GENERATION.get(params.person_generation),
        notes=notes,
    )


def operation_failure(error: dict[str, object], model: str, scrub: Scrubber) -> GenerationError:
    try:
        code = int(str(error.get("code", 0)))
    except ValueError:
        code = 0
    message = scrub(str(error.get("message") or "no message"))
    if code == 3 and looks_like_safety(message):
        return GenerationError(
            ErrorCode.ERROR_CODE_SAFETY_BLOCKED, f"{model} refused the request: {message}"
        )
    error_code, retryable = OPERATION_ERRORS.get(
        code, (ErrorCode.ERROR_CODE_GENERATION_FAILED, False)
    )
    return GenerationError(
        error_code, f"{model} operation failed (code {code}): {message}", retryable=retryable
    )


class VideoGenerator:
    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
        self._settings = factory.settings
        self._downloader = VideoDownloader(factory)

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        plan = plan_video(ctx.dispatch.video, self._settings.default_video_model)
        self._factory.require_vertex(plan.model, "Veo")
        client = await self._factory.client()
        image = None
        if ctx.input_image:
            image = types.Image(image_bytes=ctx.input_image, mime_type=input_mime_type(ctx))
        source = types.GenerateVideosSource(prompt=plan.prompt or None, image=image)
        output_uri = None
        if self._settings.video_output_gcs_uri:
            output_uri = f"{self._settings.video_output_gcs_uri.rstrip('/')}/{ctx.dispatch.job_id}/"
        config = types.GenerateVideosConfig(
            number_of_videos=plan.count,
            duration_seconds=plan.duration,
            aspect_ratio=plan.aspect_ratio,
            person_generation=plan.person_generation,
            negative_prompt=plan.negative_prompt or None,
            output_gcs_uri=output_uri,
            # Veo 3 on Vertex AI asks for the audio choice explicitly.
            generate_audio=True if model_id(plan.model).startswith("veo-3") else None,
        )
        await ctx.progress(5, f"submitting to {plan.model}")
        operation: types.GenerateVideosOperation | None = None
        deadline = self._settings.video_deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                operation = await self._factory.call(
                    lambda: client.aio.models.generate_videos(
                        model=plan.model, source=source, config=config
                    ),
                    f"generate_videos on {plan.model}",
                )
                operation = await self._wait(client, operation, plan, ctx)
        except TimeoutError:
            name = f" (operation {operation.name})" if operation and operation.name else ""
            raise GenerationError(
                ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED,
                f"{plan.model} did not finish within VIDEO_DEADLINE_SECONDS={deadline:g}{name}",
            ) from None
        return await self._collect(operation, plan, ctx)

    async def _wait(
        self,
        client: genai.Client,
        operation: types.GenerateVideosOperation,
        plan: VideoPlan,
        ctx: GenerationContext,
    ) -> types.GenerateVideosOperation:
        loop = asyncio.get_running_loop()
        started = loop.time()
        expected = expected_seconds(plan.model)
        interval = self._settings.video_poll_initial_seconds
        while not operation.done:
            if not operation.name:
                raise GenerationError(
                    ErrorCode.ERROR_CODE_NO_MEDIA,
                    f"{plan.model} answered with an unnamed operation that cannot be polled",
                )
            elapsed = loop.time() - started
            await ctx.progress(
                progress_at(elapsed, expected),
                f"generating with {plan.model}: {elapsed:.0f} s of about {expected:.0f} s",
            )
            await ctx.keep_alive()
            await asyncio.sleep(interval)
            interval = min(interval * POLL_BACKOFF, self._settings.video_poll_max_seconds)
            operation = await self._factory.call(
                functools.partial(client.aio.operations.get, operation),
                f"polling the {plan.model} operation",
            )
        return operation

    async def _collect(
        self,
        operation: types.GenerateVideosOperation,
        plan: VideoPlan,
        ctx: GenerationContext,
    ) -> GenerationResult:
        if operation.error:
            raise operation_failure(operation.error, plan.model, self._factory.scrub)
        response = operation.response or operation.result
        videos = [
            generated.video
            for generated in (response.generated_videos or [] if response else [])
            if generated.video is not None
        ]
        filtered = (response.rai_media_filtered_count or 0) if response else 0
        reasons = "; ".join(response.rai_media_filtered_reasons or []) if response else ""
        if not videos:
            if filtered or reasons:
                raise GenerationError(
                    ErrorCode.ERROR_CODE_SAFETY_BLOCKED,
                    f"{plan.model} filtered the video: {reasons or f'{filtered} filtered'}",
                )
            raise GenerationError(
                ErrorCode.ERROR_CODE_NO_MEDIA, f"{plan.model} finished without any video"
            )
        notes = list(plan.notes)
        if len(videos) < plan.count:
            why = f": {reasons}" if reasons else ""
            notes.append(f"{plan.model} returned {len(videos)} of {plan.count} videos{why}")
        files: list[GeneratedFile] = []
        for index, video in enumerate(videos):
            await ctx.progress(92, f"downloading video {index + 1} of {len(videos)}")
            path = ctx.workdir / f"video-{index}.mp4"
            await self._downloader.save(video, path, plan.model)
            files.append(GeneratedFile(path=path, content_type=video.mime_type or "video/mp4"))
        await ctx.progress(98, f"{len(files)} video(s) ready")
        return GenerationResult(files=files, model=plan.model, notes=notes)
