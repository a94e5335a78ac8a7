"""media_probe reads what a file really is, and refuses a file that is not what it claims."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import pytest
from PIL import Image

from services.common import keys
from services.common.images import sniff_image_type
from services.media_worker.media_probe import (
    IMAGE_TYPES,
    VIDEO_TYPES,
    ProbeError,
    file_digest,
    probe_file,
)


def _image(path: Path, fmt: str, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (10, 200, 30)).save(path, fmt)
    return path


def _video(path: Path, size: tuple[int, int] = (64, 36), seconds: int = 2) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(24 * seconds):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, (index * 5 % 255, 0, 0)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_images(tmp_path: Path, fmt: str, content_type: str) -> None:
    path = _image(tmp_path / "x", fmt)
    info = probe_file(path, content_type)
    data = path.read_bytes()
    assert (info.width, info.height, info.duration_seconds) == (64, 48, 0.0)
    assert info.byte_size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.content_type == content_type
    assert sniff_image_type(data) == content_type


def test_video(tmp_path: Path) -> None:
    path = _video(tmp_path / "v.mp4")
    info = probe_file(path, "video/mp4")
    assert (info.width, info.height) == (64, 36)
    assert info.duration_seconds == pytest.approx(2.0, abs=0.05)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_streams_large_files(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = bytes(range(256)) * (3 * 4096 + 7)  # a bit over 3 MiB: several chunks
    path.write_bytes(data)
    assert file_digest(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_wrong_image_type_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "x", "JPEG")
    with pytest.raises(ProbeError, match="JPEG"):
        probe_file(path, "image/png")


def test_image_claimed_as_video_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "x", "PNG")
    with pytest.raises(ProbeError):
        probe_file(path, "video/mp4")


def test_video_claimed_as_image_is_refused(tmp_path: Path) -> None:
    path = _video(tmp_path / "v.mp4")
    with pytest.raises(ProbeError):
        probe_file(path, "image/png")


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "x", "PNG", (256, 256))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ProbeError):
        probe_file(path, "image/png")


def test_unknown_content_type(tmp_path: Path) -> None:
    path = _image(tmp_path / "x", "PNG")
    with pytest.raises(ProbeError):
        probe_file(path, "image/gif")
    with pytest.raises(ProbeError):
        probe_file(path, "application/pdf")
    assert sniff_image_type(b"GIF89a") == ""


def test_every_type_the_probe_accepts_has_an_output_key() -> None:
    # The uploader builds a key for whatever passed the probe (keys.output_key raises otherwise).
    assert set(IMAGE_TYPES) | set(VIDEO_TYPES) == set(keys.EXTENSIONS)
    assert keys.output_key("j", 1, 0, "image/jpeg").endswith("/1/output-0.jpg")
