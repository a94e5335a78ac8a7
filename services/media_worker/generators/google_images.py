"""Images from Gemini image models (generate_content) and Imagen (generate_images).

Each job's size is mapped to the nearest aspect ratio the model offers; when the model renders a
different pixel size, the image is resized (center-cropped first if the ratio differs) to exactly
the requested size and a note says so. Gemini answers one image per call, so several images are
requested concurrently; Imagen returns them from one call. Output is encoded in the requested
format with Pillow unless the model's bytes already match size and format (then kept as is).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.genai import types
from PIL import Image, ImageOps, UnidentifiedImageError

from media.v1 import job_pb2
from services.common.images import parse_size, sniff_image_type
from services.common.tasks import gather_all
from services.media_worker.generators.base import (
    GeneratedFile,
    GenerationContext,
    GenerationError,
    GenerationResult,
)
from services.media_worker.generators.google_client import ClientFactory

log = logging.getLogger(__name__)

ErrorCode = job_pb2.ErrorCode

GEMINI_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGEN_ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
# (Pillow format, MIME type, file extension)
FORMATS = {
    job_pb2.IMAGE_FORMAT_UNSPECIFIED: ("PNG", "image/png", "png"),
    job_pb2.IMAGE_FORMAT_PNG: ("PNG", "image/png", "png"),
    job_pb2.IMAGE_FORMAT_JPEG: ("JPEG", "image/jpeg", "jpg"),
    job_pb2.IMAGE_FORMAT_WEBP: ("WEBP", "image/webp", "webp"),
}
STYLE_HINTS = {
    job_pb2.IMAGE_STYLE_PHOTOREALISTIC: "photorealistic, like a high-quality photograph",
    job_pb2.IMAGE_STYLE_DIGITAL_ART: "digital art",
    job_pb2.IMAGE_STYLE_ILLUSTRATION: "illustration",
    job_pb2.IMAGE_STYLE_ANIME: "anime",
    job_pb2.IMAGE_STYLE_WATERCOLOR: "watercolor painting",
    job_pb2.IMAGE_STYLE_SKETCH: "pencil sketch",
    job_pb2.IMAGE_STYLE_CINEMATIC: "cinematic film still with dramatic lighting",
    job_pb2.IMAGE_STYLE_3D_RENDER: "3D render",
}
HIGH_QUALITY_HINT = "Render it in high detail with sharp focus."
ENCODE_QUALITY = {job_pb2.IMAGE_QUALITY_HIGH: 95}  # JPEG/WEBP quality; others 90
# Finish reasons that mean a filter removed the output (rather than "nothing was drawn").
BLOCKING_FINISH_REASONS = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
    "MODEL_ARMOR",
}


def model_id(model: str) -> str:
    """The bare model name ("publishers/google/models/x" and "models/x" give "x")."""
    return model.strip().rsplit("/", 1)[-1].lower()


def image_family(model: str) -> str:
    name = model_id(model)
    if name.startswith("imagen"):
        return "imagen"
    if name.startswith("gemini"):
        return "gemini"
    return ""


def supports_image_size(model: str) -> bool:
    """Whether the model takes an output size class (1K/2K): Gemini 3 image models and the
    non-fast Imagen 4 models."""
    name = model_id(model)
    if name.startswith("gemini"):
        return name.startswith("gemini-3")
    return name.startswith("imagen-4") and "fast" not in name


@dataclass(frozen=True)
class ImagePlan:
    model: str
    family: str  # gemini | imagen
    prompt: str  # with style and quality folded in
    width: int
    height: int
    aspect_ratio: str
    image_size: str | None  # "2K" for high quality where the model takes it
    count: int
    pil_format: str
    mime_type: str
    extension: str
    encode_quality: int


def nearest_aspect_ratio(width: int, height: int, choices: Iterable[str]) -> str:
    def distance(ratio: str) -> float:
        w, h = (int(part) for part in ratio.split(":"))
        return abs(math.log(width / height) - math.log(w / h))

    return min(choices, key=distance)


def fold_prompt(
    prompt: str, style: job_pb2.ImageStyle.ValueType, quality: job_pb2.ImageQuality.ValueType
) -> str:
    """Style and quality become words in the prompt: neither model has a parameter for them."""
    parts = [prompt.strip()]
    if style in STYLE_HINTS:
        parts.append(f"Style: {STYLE_HINTS[style]}.")
    if quality == job_pb2.IMAGE_QUALITY_HIGH:
        parts.append(HIGH_QUALITY_HINT)
    return "\n\n".join(parts)


def plan_images(params: job_pb2.ImageParams, default_model: str) -> ImagePlan:
    model = params.model.strip() or default_model
    family = image_family(model)
    if not family:
        raise GenerationError(
            ErrorCode.ERROR_CODE_INVALID_REQUEST,
            f"{model} is not an image model this worker knows (gemini-*-image or imagen-*)",
        )
    try:
        width, height = parse_size(params.size)
    except ValueError as exc:
        raise GenerationError(ErrorCode.ERROR_CODE_INVALID_REQUEST, str(exc)) from None
    ratios = GEMINI_ASPECT_RATIOS if family == "gemini" else IMAGEN_ASPECT_RATIOS
    high = params.quality == job_pb2.IMAGE_QUALITY_HIGH
    pil_format, mime_type, extension = FORMATS.get(
        params.format, FORMATS[job_pb2.IMAGE_FORMAT_UNSPECIFIED]
    )
    return ImagePlan(
        model=model,
        family=family,
        prompt=fold_prompt(params.prompt, params.style, params.quality),
        width=width,
        height=height,
        aspect_ratio=nearest_aspect_ratio(width, height, ratios),
        image_size="2K" if high and supports_image_size(model) else None,
        count=max(1, params.number_of_images),
        pil_format=pil_format,
        mime_type=mime_type,
        extension=extension,
        encode_quality=ENCODE_QUALITY.get(params.quality, 90),
    )


def finalize_image(data: bytes, plan: ImagePlan, path: Path) -> str | None:
    """Writes the image at exactly the planned size and format; returns a note if resized.

    Blocking (Pillow): run it in a thread.
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise GenerationError(
            ErrorCode.ERROR_CODE_NO_MEDIA,
            f"{plan.model} returned data that is not a readable image ({exc})",
        ) from None
    source_format = image.format
    note = None
    if image.size != (plan.width, plan.height):
        source_w, source_h = image.size
        target_ratio = plan.width / plan.height
        if abs(source_w / source_h - target_ratio) / target_ratio < 0.01:
            image = image.resize((plan.width, plan.height), Image.Resampling.LANCZOS)
            how = "resized"
        else:
            image = ImageOps.fit(image, (plan.width, plan.height), Image.Resampling.LANCZOS)
            how = "center-cropped and resized"
        note = (
            f"{model_id(plan.model)} renders {plan.width}x{plan.height} as {plan.aspect_ratio} "
            f"at {source_w}x{source_h}; {how} to {plan.width}x{plan.height}"
        )
    if note is None and source_format == plan.pil_format:
        path.write_bytes(data)  # already what was asked for: keep the model's bytes
        return None
    if plan.pil_format == "JPEG" and image.mode != "RGB":
        # JPEG has no alpha: flatten onto white rather than letting transparency turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    options: dict[str, object] = {}
    if plan.pil_format in ("JPEG", "WEBP"):
        options["quality"] = plan.encode_quality
    image.save(path, format=plan.pil_format, **options)
    return note


def input_mime_type(ctx: GenerationContext) -> str:
    """The input image's type as stored, else as its bytes say. The API needs a type, and
    job_service admits only types sniff_image_type knows, so its PNG fallback (what this generator
    always sent for unrecognised bytes) only keeps an odd request well-formed."""
    return ctx.input_mime_type or sniff_image_type(ctx.input_image or b"") or "image/png"


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value) or "")


def image_from_gemini(response: types.GenerateContentResponse, model: str) -> bytes:
    """The generated image of one generate_content answer, or why there is none."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = _enum_name(feedback.block_reason)
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        raise GenerationError(
            ErrorCode.ERROR_CODE_SAFETY_BLOCKED, f"{model} blocked the prompt ({reason}){detail}"
        )
    if not response.candidates:
        raise GenerationError(ErrorCode.ERROR_CODE_NO_MEDIA, f"{model} returned no candidates")
    texts: list[str] = []
    finish_reason = ""
    finish_message = ""
    for candidate in response.candidates:
        finish_reason = finish_reason or _enum_name(candidate.finish_reason)
        finish_message = finish_message or (candidate.finish_message or "")
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        for part in parts:
            if part.thought:  # Gemini 3 shows interim "thinking" images: not the answer
                continue
            blob = part.inline_data
            if blob is not None and blob.data:
                if not blob.mime_type or blob.mime_type.startswith("image/"):
                    return blob.data
            if part.text:
                texts.append(part.text.strip())
    said = finish_message or " ".join(texts)
    detail = f": {said}" if said else ""
    if finish_reason in BLOCKING_FINISH_REASONS:
        raise GenerationError(
            ErrorCode.ERROR_CODE_SAFETY_BLOCKED,
            f"{model} withheld the image ({finish_reason}){detail}",
        )
    raise GenerationError(
        ErrorCode.ERROR_CODE_NO_MEDIA,
        f"{model} returned no image (finish reason {finish_reason or 'none'}){detail}",
    )


class ImageGenerator:
    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        plan = plan_images(ctx.dispatch.image, self._factory.settings.default_image_model)
        if plan.family == "imagen":
            self._factory.require_vertex(plan.model, "Imagen")
            if ctx.input_image:
                raise GenerationError(
                    ErrorCode.ERROR_CODE_INVALID_REQUEST,
                    f"{plan.model} cannot edit an input image; use a Gemini image model "
                    "such as gemini-2.5-flash-image",
                )
        noun = "image" if plan.count == 1 else "images"
        await ctx.progress(5, f"generating {plan.count} {noun} with {plan.model}")
        if plan.family == "gemini":
            images, failures = await self._gemini(plan, ctx)
        else:
            images, failures = await self._imagen(plan, ctx)
        if not images:
            # Prefer the safety reason when some calls were blocked and others merely empty.
            failures.sort(key=lambda e: e.code != ErrorCode.ERROR_CODE_SAFETY_BLOCKED)
            raise failures[0]
        notes: list[str] = []
        if failures:
            notes.append(
                f"{plan.model} returned {len(images)} of {plan.count} images: {failures[0].message}"
            )
        files: list[GeneratedFile] = []
        for index, data in enumerate(images):
            path = ctx.workdir / f"image-{index}.{plan.extension}"
            note = await asyncio.to_thread(finalize_image, data, plan, path)
            if note and note not in notes:
                notes.append(note)
            files.append(GeneratedFile(path=path, content_type=plan.mime_type))
        await ctx.progress(95, f"{len(files)} {noun} ready")
        return GenerationResult(files=files, model=plan.model, notes=notes)

    async def _gemini(
        self, plan: ImagePlan, ctx: GenerationContext
    ) -> tuple[list[bytes], list[GenerationError]]:
        client = await self._factory.client()
        name = model_id(plan.model)
        modalities = ["TEXT", "IMAGE"] if name.startswith("gemini-2.0") else ["IMAGE"]
        config = types.GenerateContentConfig(
            response_modalities=modalities,
            # No tools are declared; skipping the SDK's function-calling loop skips its logging.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            image_config=types.ImageConfig(
                aspect_ratio=plan.aspect_ratio, image_size=plan.image_size
            ),
        )
        parts: list[types.Part] = []
        if ctx.input_image:
            parts.append(
                types.Part.from_bytes(data=ctx.input_image, mime_type=input_mime_type(ctx))
            )
        parts.append(types.Part.from_text(text=plan.prompt))
        # What the SDK makes of a list of user parts (a str becomes Part(text=...)): one user turn.
        contents = types.UserContent(parts=parts)
        done = 0

        async def one() -> bytes | GenerationError:
            nonlocal done
            response = await self._factory.call(
                lambda: client.aio.models.generate_content(
                    model=plan.model, contents=contents, config=config
                ),
                f"generate_content on {plan.model}",
            )
            try:
                data: bytes | GenerationError = image_from_gemini(response, plan.model)
            except GenerationError as exc:
                data = exc
            done += 1
            await ctx.progress(10 + 80 * done // plan.count, f"image {done} of {plan.count}")
            return data

        results = await gather_all(one() for _ in range(plan.count))
        return (
            [r for r in results if isinstance(r, bytes)],
            [r for r in results if isinstance(r, GenerationError)],
        )

    async def _imagen(
        self, plan: ImagePlan, ctx: GenerationContext
    ) -> tuple[list[bytes], list[GenerationError]]:
        client = await self._factory.client()
        jpeg = plan.pil_format == "JPEG"  # Imagen encodes PNG or JPEG; WEBP is converted here
        config = types.GenerateImagesConfig(
            number_of_images=plan.count,
            aspect_ratio=plan.aspect_ratio,
            image_size=plan.image_size,
            output_mime_type="image/jpeg" if jpeg else "image/png",
            output_compression_quality=plan.encode_quality if jpeg else None,
            include_rai_reason=True,
        )
        response = await self._factory.call(
            lambda: client.aio.models.generate_images(
                model=plan.model, prompt=plan.prompt, config=config
            ),
            f"generate_images on {plan.model}",
        )
        await ctx.progress(90, f"{plan.model} answered")
        images: list[bytes] = []
        reasons: list[str] = []
        for generated in response.generated_images or []:
            if generated.image is not None and generated.image.image_bytes:
                images.append(generated.image.image_bytes)
            elif generated.rai_filtered_reason:
                reasons.append(generated.rai_filtered_reason)
        failures: list[GenerationError] = []
        missing = plan.count - len(images)
        if missing > 0 and reasons:
            failures.append(
                GenerationError(
                    ErrorCode.ERROR_CODE_SAFETY_BLOCKED,
                    f"{plan.model} filtered {missing} image(s): {reasons[0]}",
                )
            )
        elif missing > 0:
            failures.append(
                GenerationError(
                    ErrorCode.ERROR_CODE_NO_MEDIA,
                    f"{plan.model} returned {len(images)} of {plan.count} images and no reason",
                )
            )
        return images, failures
