"""The local generator writes real media: decode every file and check what the job asked for."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av
import pytest
from PIL import Image

from media.v1 import events_pb2, job_pb2
from services.media_worker.generators.base import GenerationContext, GenerationError
from services.media_worker.generators.local import LocalGenerator, parse_size, video_dimensions


class Recorder:
    def __init__(self) -> None:
        self.progress: list[int] = []

    async def __call__(self, progress: int, message: str) -> None:
        assert message
        self.progress.append(progress)


async def _keep_alive() -> None:
    return None


def _ctx(tmp_path: Path, dispatch: events_pb2.JobDispatch, **kwargs: object) -> GenerationContext:
    return GenerationContext(
        dispatch=dispatch,
        workdir=tmp_path,
        progress=kwargs.pop("progress", Recorder()),  # type: ignore[arg-type]
        keep_alive=_keep_alive,
        **kwargs,  # type: ignore[arg-type]
    )


def _image_job(**params: object) -> events_pb2.JobDispatch:
    return events_pb2.JobDispatch(
        job_id="job-1",
        kind=job_pb2.MEDIA_KIND_IMAGE,
        image=job_pb2.ImageParams(prompt="a lighthouse at night", **params),  # type: ignore[arg-type]
    )


def _video_job(**params: object) -> events_pb2.JobDispatch:
    return events_pb2.JobDispatch(
        job_id="job-2",
        kind=job_pb2.MEDIA_KIND_VIDEO,
        video=job_pb2.VideoParams(prompt="a paper boat on a river", **params),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("fmt", "pil_format", "content_type"),
    [
        (job_pb2.IMAGE_FORMAT_UNSPECIFIED, "PNG", "image/png"),
        (job_pb2.IMAGE_FORMAT_PNG, "PNG", "image/png"),
        (job_pb2.IMAGE_FORMAT_JPEG, "JPEG", "image/jpeg"),
        (job_pb2.IMAGE_FORMAT_WEBP, "WEBP", "image/webp"),
    ],
)
async def test_images_have_requested_format_size_and_count(
    tmp_path: Path, fmt: int, pil_format: str, content_type: str
) -> None:
    progress = Recorder()
    ctx = _ctx(
        tmp_path, _image_job(size="832x1248", format=fmt, number_of_images=3), progress=progress
    )
    result = await LocalGenerator().generate(ctx)
    assert result.model == "local"
    assert len(result.files) == 3
    for generated in result.files:
        assert generated.content_type == content_type
        assert generated.path.parent == tmp_path
        with Image.open(generated.path) as image:
            assert image.format == pil_format
            assert image.size == (832, 1248)
    assert progress.progress == [33, 66, 100]


async def test_empty_size_and_count_mean_one_1024_square(tmp_path: Path) -> None:
    result = await LocalGenerator().generate(_ctx(tmp_path, _image_job()))
    assert len(result.files) == 1
    with Image.open(result.files[0].path) as image:
        assert image.size == (1024, 1024)


async def test_same_prompt_same_picture_and_prompt_changes_it(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    gen = LocalGenerator()
    first = await gen.generate(_ctx(tmp_path / "a", _image_job(size="256x256")))
    again = await gen.generate(_ctx(tmp_path / "b", _image_job(size="256x256")))
    other_job = _image_job(size="256x256")
    other_job.image.prompt = "a different prompt"
    other = await gen.generate(_ctx(tmp_path / "c", other_job))
    pixels = [Image.open(r.files[0].path).tobytes() for r in (first, again, other)]
    assert pixels[0] == pixels[1]
    assert pixels[0] != pixels[2]


async def test_input_image_is_the_base_fitted_to_size(tmp_path: Path) -> None:
    source = Image.new("RGB", (300, 200), (250, 0, 0))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    ctx = _ctx(tmp_path, _image_job(size="512x512"), input_image=buffer.getvalue())
    result = await LocalGenerator().generate(ctx)
    with Image.open(result.files[0].path) as image:
        assert image.size == (512, 512)
        # The top-left corner shows the (red) input under faint shapes.
        red, green, blue = image.convert("RGB").getpixel((2, 2))
        assert red > 150 and red > green + 60 and red > blue + 60


async def test_undecodable_input_image_is_a_generation_error(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, _image_job(size="256x256"), input_image=b"not an image")
    with pytest.raises(GenerationError) as info:
        await LocalGenerator().generate(ctx)
    assert info.value.code == job_pb2.ERROR_CODE_INVALID_REQUEST
    assert not info.value.retryable


@pytest.mark.parametrize("size", ["huge", "0x10", "10x", "99999x10"])
def test_bad_sizes_are_rejected(size: str) -> None:
    with pytest.raises(GenerationError):
        parse_size(size)


def test_video_dimensions_keep_the_exact_aspect_ratio() -> None:
    assert video_dimensions(job_pb2.ASPECT_RATIO_UNSPECIFIED, 1280) == (1280, 720)
    assert video_dimensions(job_pb2.ASPECT_RATIO_16_9, 1280) == (1280, 720)
    assert video_dimensions(job_pb2.ASPECT_RATIO_9_16, 1280) == (720, 1280)
    assert video_dimensions(job_pb2.ASPECT_RATIO_9_16, 640) == (360, 640)
    with pytest.raises(ValueError):
        video_dimensions(job_pb2.ASPECT_RATIO_16_9, 1000)


def _decode(path: Path) -> tuple[str, int, int, str, float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        duration = float(stream.duration * stream.time_base)
        ctx = stream.codec_context
        return ctx.name, ctx.width, ctx.height, ctx.format.name, duration, frames


async def test_videos_are_h264_mp4_with_requested_shape_duration_and_count(tmp_path: Path) -> None:
    progress = Recorder()
    # A small frame keeps the test fast; the aspect-ratio logic is the same as at 1280.
    gen = LocalGenerator(video_long_side=320)
    dispatch = _video_job(
        aspect_ratio=job_pb2.ASPECT_RATIO_9_16, duration_seconds=4, number_of_videos=2
    )
    result = await gen.generate(_ctx(tmp_path, dispatch, progress=progress))
    assert len(result.files) == 2
    for generated in result.files:
        assert generated.content_type == "video/mp4"
        codec, width, height, pix_fmt, duration, frames = _decode(generated.path)
        assert (codec, width, height, pix_fmt) == ("h264", 180, 320, "yuv420p")
        assert duration == pytest.approx(4.0, abs=0.05)
        assert frames == 4 * 24
    # One report per encoded second, rising to 100.
    assert progress.progress == sorted(progress.progress)
    assert len(progress.progress) == 8 and progress.progress[-1] == 100


async def test_default_video_is_16_9_and_eight_seconds(tmp_path: Path) -> None:
    result = await LocalGenerator(video_long_side=256).generate(_ctx(tmp_path, _video_job()))
    _, width, height, _, duration, frames = _decode(result.files[0].path)
    assert (width, height) == (256, 144)
    assert duration == pytest.approx(8.0, abs=0.05)
    assert frames == 8 * 24


async def test_cancelling_a_video_stops_between_seconds(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def progress(value: int, message: str) -> None:
        started.set()

    gen = LocalGenerator(video_long_side=256)
    ctx = _ctx(tmp_path, _video_job(duration_seconds=8), progress=progress)
    task = asyncio.create_task(gen.generate(ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_generator_is_named_local() -> None:
    assert LocalGenerator.name == "local"
