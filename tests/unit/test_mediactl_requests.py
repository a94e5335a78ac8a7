"""mediactl: command-line arguments -> CreateJobRequest / ListJobsRequest."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from media.v1 import job_pb2
from services.mediactl import build
from services.mediactl.build import create_request, list_request
from services.mediactl.exit_codes import EXIT_USAGE
from services.mediactl.main import main
from services.mediactl.parser import build_parser


def _request(*argv: str):
    return create_request(build_parser().parse_args(list(argv)))


def _image_file(tmp_path: Path, fmt: str, name: str) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format=fmt)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return path


def test_image_flags_map_to_image_params() -> None:
    request = _request(
        "create", "image", "--prompt", "a red fox", "--size", "1152x896", "--format", "webp",
        "--count", "3", "--style", "digital-art", "--quality", "high", "--model", "m1",
        "--request-id", "req-1",
    )  # fmt: skip
    assert request.WhichOneof("params") == "image"
    assert request.request_id == "req-1"
    params = request.image
    assert params.prompt == "a red fox"
    assert params.size == "1152x896"
    assert params.format == job_pb2.IMAGE_FORMAT_WEBP
    assert params.number_of_images == 3
    assert params.style == job_pb2.IMAGE_STYLE_DIGITAL_ART
    assert params.quality == job_pb2.IMAGE_QUALITY_HIGH
    assert params.model == "m1"
    assert not params.HasField("input_image")


def test_image_defaults_leave_the_server_defaults() -> None:
    params = _request("create", "image", "--prompt", "p").image
    assert params.size == ""
    assert params.format == job_pb2.IMAGE_FORMAT_UNSPECIFIED
    assert params.number_of_images == 0
    assert params.style == job_pb2.IMAGE_STYLE_UNSPECIFIED
    assert params.quality == job_pb2.IMAGE_QUALITY_UNSPECIFIED
    assert params.model == ""


def test_video_flags_map_to_video_params() -> None:
    request = _request(
        "create", "video", "--prompt", "waves", "--negative-prompt", "boats",
        "--aspect-ratio", "9:16", "--duration", "6", "--count", "2",
        "--person-generation", "ALLOW_ADULT", "--model", "veo",
    )  # fmt: skip
    assert request.WhichOneof("params") == "video"
    params = request.video
    assert params.prompt == "waves"
    assert params.negative_prompt == "boats"
    assert params.aspect_ratio == job_pb2.ASPECT_RATIO_9_16
    assert params.duration_seconds == 6
    assert params.number_of_videos == 2
    assert params.person_generation == job_pb2.PERSON_GENERATION_ALLOW_ADULT
    assert params.model == "veo"


def test_every_enum_value_has_a_cli_spelling() -> None:
    assert set(build.IMAGE_FORMATS) == {"png", "jpeg", "webp"}
    assert set(build.IMAGE_QUALITIES) == {"standard", "high"}
    assert set(build.ASPECT_RATIOS) == {"16:9", "9:16"}
    assert set(build.PERSON_GENERATIONS) == {"dont_allow", "allow_adult", "allow_all"}
    assert len(build.IMAGE_STYLES) == len(job_pb2.ImageStyle.keys()) - 1
    assert "3d_render" in build.IMAGE_STYLES
    assert set(build.STATUSES) == {"queued", "running", "succeeded", "failed", "canceled"}


def test_request_id_defaults_to_a_fresh_random_one() -> None:
    first = _request("create", "image", "--prompt", "p").request_id
    second = _request("create", "image", "--prompt", "p").request_id
    assert first and second and first != second
    assert len(first) <= 128 and first.isascii()


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_input_image_mime_type_comes_from_the_bytes(tmp_path: Path, fmt: str, mime: str) -> None:
    # A misleading suffix: the type must come from the content.
    path = _image_file(tmp_path, fmt, "input.gif")
    image = build.read_input_image(str(path))
    assert image.mime_type == mime
    assert image.data == path.read_bytes()


def test_the_input_image_travels_as_an_upload_not_in_the_request(tmp_path: Path) -> None:
    path = _image_file(tmp_path, "PNG", "input.png")
    request = _request("create", "video", "--prompt", "p", "--input-image", str(path))
    assert not request.video.HasField("input_image")  # added once the image is uploaded
    build.with_upload(request, "u-1", "image/png")
    assert request.video.input_image == job_pb2.InputImage(upload_id="u-1", mime_type="image/png")


def test_input_image_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(build.InputError, match="not an image"):
        build.read_input_image(str(path))


def test_missing_input_image_is_a_usage_error(tmp_path: Path, capsys) -> None:
    argv = ["--addr", "x:1", "--token", "t", "create", "image", "--prompt", "p"]
    code = main([*argv, "--input-image", str(tmp_path / "missing.png")])
    assert code == EXIT_USAGE
    assert "--input-image: cannot read" in capsys.readouterr().err


def test_unknown_choice_is_a_usage_error(capsys) -> None:
    assert main(["create", "image", "--prompt", "p", "--format", "gif"]) == EXIT_USAGE
    assert "'gif' is not one of png, jpeg, webp" in capsys.readouterr().err


def test_list_filters() -> None:
    args = build_parser().parse_args(
        ["list", "--page-size", "5", "--page-token", "abc", "--kind", "video", "--status", "failed"]
    )
    request = list_request(args)
    assert request.page_size == 5
    assert request.page_token == "abc"
    assert request.kind == job_pb2.MEDIA_KIND_VIDEO
    assert request.status == job_pb2.JOB_STATUS_FAILED
    unfiltered = list_request(build_parser().parse_args(["list"]))
    assert unfiltered.kind == job_pb2.MEDIA_KIND_UNSPECIFIED
    assert unfiltered.status == job_pb2.JOB_STATUS_UNSPECIFIED


def test_connection_flags_are_accepted_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--addr", "a:1", "--token", "t", "get", "j"])
    after = parser.parse_args(["get", "j", "--addr", "a:1", "--token", "t"])
    for args in (before, after):
        assert args.addr == "a:1"
        assert args.token == "t"
    neither = parser.parse_args(["get", "j"])
    assert not hasattr(neither, "addr")
