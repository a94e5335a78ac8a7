"""A generator that needs no network: real images with Pillow and real H.264 MP4 with PyAV.

The content is derived from the prompt (same prompt, same picture) so that a run without Google
credentials still exercises the whole pipeline with files that decode like the real ones.
CPU work runs in worker threads; the event loop only schedules it and reports progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import av
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

from media.v1 import job_pb2
from services.common import images
from services.media_worker.generators.base import (
    GeneratedFile,
    GenerationContext,
    GenerationError,
    GenerationResult,
)

MODEL = "local"
MAX_SIDE = 4096  # a sanity bound; job_service only lets the models' sizes through
FPS = 24
DEFAULT_DURATION_SECONDS = 8
MAX_DURATION_SECONDS = 60

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# Format enum -> (Pillow format, file extension, content type).
IMAGE_FORMATS: dict[int, tuple[str, str, str]] = {
    job_pb2.IMAGE_FORMAT_UNSPECIFIED: ("PNG", "png", "image/png"),
    job_pb2.IMAGE_FORMAT_PNG: ("PNG", "png", "image/png"),
    job_pb2.IMAGE_FORMAT_JPEG: ("JPEG", "jpg", "image/jpeg"),
    job_pb2.IMAGE_FORMAT_WEBP: ("WEBP", "webp", "image/webp"),
}


def parse_size(size: str) -> tuple[int, int]:
    """The job's "WIDTHxHEIGHT" (empty: the default size), each side within MAX_SIDE."""
    try:
        dims = images.parse_size(size)
    except ValueError as exc:
        raise GenerationError(job_pb2.ERROR_CODE_INVALID_REQUEST, str(exc)) from None
    if max(dims) > MAX_SIDE:
        raise GenerationError(
            job_pb2.ERROR_CODE_INVALID_REQUEST, f"size {size!r} is out of range 1..{MAX_SIDE}"
        )
    return dims


def video_dimensions(aspect_ratio: int, long_side: int) -> tuple[int, int]:
    """16:9 (the default) or 9:16 at `long_side`, both sides even as yuv420p requires."""
    short = long_side * 9 // 16
    if long_side % 16 or short % 2:
        raise ValueError(f"long side {long_side} gives no exact 16:9 frame with even sides")
    if aspect_ratio == job_pb2.ASPECT_RATIO_9_16:
        return short, long_side
    return long_side, short


@dataclass(frozen=True)
class _Palette:
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    accents: tuple[tuple[int, int, int], ...]


def _rng(prompt: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{index}\0{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _color(rng: random.Random, low: int = 0, high: int = 255) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _palette(rng: random.Random) -> _Palette:
    return _Palette(
        top=_color(rng, 20, 140),
        bottom=_color(rng, 100, 240),
        accents=tuple(_color(rng, 40, 255) for _ in range(6)),
    )


def _gradient(size: tuple[int, int], palette: _Palette) -> Image.Image:
    # linear_gradient and composite are C loops: fast even at 1536 px.
    mask = Image.linear_gradient("L").resize(size)
    top = Image.new("RGB", size, palette.top)
    bottom = Image.new("RGB", size, palette.bottom)
    return Image.composite(bottom, top, mask)


def _fit(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The input image, upright, scaled and center-cropped to fill `size`."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened)
            return ImageOps.fit(upright.convert("RGB"), size, Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GenerationError(
            job_pb2.ERROR_CODE_INVALID_REQUEST, f"the input image could not be decoded: {exc}"
        ) from None


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def _caption(image: Image.Image, text: str) -> None:
    """Draws the prompt in a band along the bottom edge."""
    width, height = image.size
    font_size = max(10, min(width, height) // 22)
    chars_per_line = max(8, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(text, chars_per_line)[:3] or [""]
    band = int(font_size * 1.3 * len(lines) + font_size)
    overlay = Image.new("RGBA", (width, band), (0, 0, 0, 140))
    draw = ImageDraw.Draw(overlay)
    font = _font(font_size)
    for number, line in enumerate(lines):
        draw.text((font_size // 2, font_size // 2 + number * int(font_size * 1.3)), line, font=font)
    region = image.crop((0, height - band, width, height)).convert("RGBA")
    image.paste(Image.alpha_composite(region, overlay).convert("RGB"), (0, height - band))


def _shapes(image: Image.Image, rng: random.Random, palette: _Palette, alpha: int) -> None:
    width, height = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.randint(5, 10)):
        color = (*rng.choice(palette.accents), alpha)
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randint(min(width, height) // 16, min(width, height) // 4)
        box = (x - radius, y - radius, x + radius, y + radius)
        match rng.randrange(3):
            case 0:
                draw.ellipse(box, fill=color)
            case 1:
                draw.rectangle(box, fill=color)
            case _:
                points = [(rng.randrange(width), rng.randrange(height)) for _ in range(3)]
                draw.polygon(points, fill=color)
    image.paste(Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB"))


def _stylize(image: Image.Image, style: int) -> Image.Image:
    """A cheap nod to the requested style so different styles give different pictures."""
    match style:
        case job_pb2.IMAGE_STYLE_SKETCH:
            return ImageOps.grayscale(image).filter(ImageFilter.CONTOUR).convert("RGB")
        case job_pb2.IMAGE_STYLE_WATERCOLOR:
            return image.filter(ImageFilter.GaussianBlur(radius=max(1, image.width // 200)))
        case job_pb2.IMAGE_STYLE_CINEMATIC:
            return ImageOps.autocontrast(image, cutoff=2)
        case _:
            return image


def render_image(
    prompt: str,
    size: tuple[int, int],
    index: int,
    *,
    style: int = job_pb2.IMAGE_STYLE_UNSPECIFIED,
    base: bytes | None = None,
) -> Image.Image:
    """One picture for `prompt`: gradient (or the input image), shapes, the prompt as caption."""
    rng = _rng(prompt, index)
    palette = _palette(rng)
    image = _fit(base, size) if base else _gradient(size, palette)
    # Over an input image the shapes stay faint so the picture remains recognizable.
    _shapes(image, rng, palette, alpha=70 if base else 190)
    image = _stylize(image, style)
    _caption(image, prompt)
    return image


def save_image(image: Image.Image, path: Path, pil_format: str, quality: int) -> None:
    high = quality == job_pb2.IMAGE_QUALITY_HIGH
    if pil_format == "PNG":
        # Level 1 is several times faster than the default and only a little larger.
        image.save(path, "PNG", compress_level=6 if high else 1)
    elif pil_format == "JPEG":
        image.save(path, "JPEG", quality=95 if high else 85)
    else:
        image.save(path, "WEBP", quality=92 if high else 80, method=4 if high else 2)


class _VideoWriter:
    """Writes one MP4 a second at a time so progress can be reported between seconds.

    Not thread-safe: one thread at a time (the caller awaits each step).
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        prompt: str,
        index: int,
        base: bytes | None,
        preset: str,
    ) -> None:
        self.size = size
        width, height = size
        rng = _rng(prompt, index)
        palette = _palette(rng)
        background = _fit(base, size) if base else _gradient(size, palette)
        _caption(background, prompt)
        self._background = background
        unit = min(width, height)
        # Each sprite: color, radius, start position and velocity in px per frame.
        self._sprites = [
            (
                rng.choice(palette.accents),
                rng.randint(unit // 20, unit // 8),
                (rng.uniform(0, width), rng.uniform(0, height * 0.7)),
                (rng.uniform(-1, 1) * unit / 60, rng.uniform(-1, 1) * unit / 90),
                rng.randrange(2),
            )
            for _ in range(rng.randint(3, 6))
        ]
        self._font = _font(max(12, unit // 24))
        self._frame = 0
        self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
        stream = self._container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": preset, "crf": "23"}
        self._stream = stream

    def _draw(self, frame: int) -> Image.Image:
        width, height = self.size
        image = self._background.copy()
        draw = ImageDraw.Draw(image)
        for color, radius, (x0, y0), (vx, vy), shape in self._sprites:
            # Bounce inside the frame: a triangle wave of the straight-line position.
            x = _bounce(x0 + vx * frame, width - 2 * radius) + radius
            y = _bounce(y0 + vy * frame, height - 2 * radius) + radius
            box = (x - radius, y - radius, x + radius, y + radius)
            if shape:
                draw.ellipse(box, fill=color)
            else:
                draw.rectangle(box, fill=color)
        seconds = frame / FPS
        draw.text((10, 10), f"{seconds:05.2f}s", font=self._font, fill=(255, 255, 255))
        return image

    def write_second(self, frames: int) -> None:
        for _ in range(frames):
            # PyAV declares from_image without types (av/video/frame.pyi).
            frame = av.VideoFrame.from_image(self._draw(self._frame))  # type: ignore[no-untyped-call]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self._frame += 1

    def finish(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # a half-written file is removed with the workdir anyway
            pass


def _bounce(position: float, span: float) -> float:
    if span <= 0:
        return 0.0
    period = 2 * span
    position %= period
    return position if position <= span else period - position


async def _in_thread(fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
    """asyncio.to_thread that, when cancelled, still waits for the thread to finish.

    A thread cannot be interrupted; returning early would let the caller close an encoder the
    thread is still writing to.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


class LocalGenerator:
    name = MODEL

    def __init__(self, *, video_long_side: int = 1280, video_preset: str = "ultrafast") -> None:
        video_dimensions(job_pb2.ASPECT_RATIO_16_9, video_long_side)  # fail fast on a bad size
        self._video_long_side = video_long_side
        self._video_preset = video_preset

    async def generate(self, ctx: GenerationContext) -> GenerationResult:
        which = ctx.dispatch.WhichOneof("params")
        if which == "image":
            return await self._images(ctx, ctx.dispatch.image)
        if which == "video":
            return await self._videos(ctx, ctx.dispatch.video)
        raise GenerationError(job_pb2.ERROR_CODE_INVALID_REQUEST, "the job has no parameters")

    async def _images(
        self, ctx: GenerationContext, params: job_pb2.ImageParams
    ) -> GenerationResult:
        size = parse_size(params.size)
        count = params.number_of_images or 1
        pil_format, ext, content_type = IMAGE_FORMATS.get(
            params.format, IMAGE_FORMATS[job_pb2.IMAGE_FORMAT_PNG]
        )
        files: list[GeneratedFile] = []
        for index in range(count):
            path = ctx.workdir / f"output-{index}.{ext}"
            await _in_thread(_write_image, params, size, index, ctx.input_image, path, pil_format)
            files.append(GeneratedFile(path=path, content_type=content_type))
            await ctx.progress(100 * (index + 1) // count, f"image {index + 1} of {count}")
        return GenerationResult(files=files, model=MODEL)

    async def _videos(
        self, ctx: GenerationContext, params: job_pb2.VideoParams
    ) -> GenerationResult:
        size = video_dimensions(params.aspect_ratio, self._video_long_side)
        seconds = params.duration_seconds or DEFAULT_DURATION_SECONDS
        if not 0 < seconds <= MAX_DURATION_SECONDS:
            raise GenerationError(
                job_pb2.ERROR_CODE_INVALID_REQUEST,
                f"duration_seconds must be 1..{MAX_DURATION_SECONDS}, got {seconds}",
            )
        count = params.number_of_videos or 1
        files: list[GeneratedFile] = []
        for index in range(count):
            path = ctx.workdir / f"output-{index}.mp4"
            writer = await _in_thread(
                _VideoWriter,
                path,
                size,
                params.prompt,
                index,
                ctx.input_image,
                self._video_preset,
            )
            try:
                for second in range(seconds):
                    await _in_thread(writer.write_second, FPS)
                    done = index * seconds + second + 1
                    await ctx.progress(
                        100 * done // (count * seconds),
                        f"video {index + 1} of {count}: {second + 1}s of {seconds}s encoded",
                    )
                await _in_thread(writer.finish)
            except BaseException:
                await _in_thread(writer.abort)
                raise
            files.append(GeneratedFile(path=path, content_type="video/mp4"))
        return GenerationResult(files=files, model=MODEL)


def _write_image(
    params: job_pb2.ImageParams,
    size: tuple[int, int],
    index: int,
    base: bytes | None,
    path: Path,
    pil_format: str,
) -> None:
    image = render_image(params.prompt, size, index, style=params.style, base=base)
    save_image(image, path, pil_format, params.quality)
