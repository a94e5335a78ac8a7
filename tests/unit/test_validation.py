import hashlib
import io
from dataclasses import replace

import grpc
import pytest
from PIL import Image

from media.v1 import job_pb2, job_service_pb2, worker_service_pb2
from services.common.errors import RpcError
from services.job_service import validation
from services.job_service.settings import IMAGE_MODELS, VIDEO_MODELS, Limits

LIMITS = Limits(
    max_prompt_chars=100,
    max_input_image_bytes=200_000,
    max_page_size=100,
    image_models=IMAGE_MODELS,
    video_models=VIDEO_MODELS,
)


def png(width: int = 8, height: int = 8, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format=fmt)
    return out.getvalue()


def fields(request: job_service_pb2.CreateJobRequest) -> list[str]:
    with pytest.raises(RpcError) as caught:
        validation.create_request(request, LIMITS)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return [f for f, _ in caught.value.violations]


def image(**kw: object) -> job_service_pb2.CreateJobRequest:
    return job_service_pb2.CreateJobRequest(image=job_pb2.ImageParams(**kw))


def video(**kw: object) -> job_service_pb2.CreateJobRequest:
    return job_service_pb2.CreateJobRequest(video=job_pb2.VideoParams(**kw))


def test_defaults_are_filled_in() -> None:
    out = validation.create_request(image(prompt="a cat"), LIMITS).request
    assert out.image.number_of_images == 1
    assert out.image.size == "1024x1024"
    assert out.image.format == job_pb2.IMAGE_FORMAT_PNG
    out = validation.create_request(video(prompt="waves"), LIMITS).request
    assert out.video.duration_seconds == 8
    assert out.video.aspect_ratio == job_pb2.ASPECT_RATIO_16_9
    assert out.video.number_of_videos == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (job_service_pb2.CreateJobRequest(), "params"),
        (image(prompt="   "), "image.prompt"),
        (image(prompt="x" * 101), "image.prompt"),
        (image(prompt="a\x00b"), "image.prompt"),
        (image(prompt="a", number_of_images=5), "image.number_of_images"),
        (image(prompt="a", number_of_images=-1), "image.number_of_images"),
        (image(prompt="a", size="1000x1000"), "image.size"),
        (image(prompt="a", format=17), "image.format"),
        (image(prompt="a", style=99), "image.style"),
        (image(prompt="a", quality=-3), "image.quality"),
        (image(prompt="a", model="dall-e-3"), "image.model"),
        (video(prompt=""), "video.prompt"),
        (video(prompt="a", duration_seconds=3), "video.duration_seconds"),
        (video(prompt="a", duration_seconds=60), "video.duration_seconds"),
        (video(prompt="a", number_of_videos=9), "video.number_of_videos"),
        (video(prompt="a", aspect_ratio=7), "video.aspect_ratio"),
        (video(prompt="a", person_generation=12), "video.person_generation"),
        (video(prompt="a", model="veo-9"), "video.model"),
        (video(prompt="a", negative_prompt="n" * 101), "video.negative_prompt"),
        (
            job_service_pb2.CreateJobRequest(
                request_id="has space", image=job_pb2.ImageParams(prompt="a")
            ),
            "request_id",
        ),
    ],
)
def test_each_bad_field_is_named(request_: job_service_pb2.CreateJobRequest, field: str) -> None:
    assert field in fields(request_)


def test_every_bad_field_is_reported_at_once() -> None:
    assert fields(image(prompt="", size="1x1", number_of_images=10)) == [
        "image.prompt",
        "image.number_of_images",
        "image.size",
    ]


def test_input_image_is_sniffed_and_checked() -> None:
    data = png(fmt="JPEG")
    request = image(prompt="a", input_image=job_pb2.InputImage(data=data))
    ok = validation.create_request(request, LIMITS)
    assert ok.request is request  # normalized in place: no copy of the request or its image
    assert ok.request.image.input_image.mime_type == "image/jpeg"
    # The bytes moved out of the request, which is hashed and stored without them.
    assert ok.image == data and not request.image.input_image.data
    assert ok.image_sha256 == hashlib.sha256(data).digest()
    assert ok.take_image() == data and ok.image is None
    assert fields(image(prompt="a", input_image=job_pb2.InputImage(data=b"not an image"))) == [
        "image.input_image.data"
    ]
    assert fields(image(prompt="a", input_image=job_pb2.InputImage(data=png()[:30]))) == [
        "image.input_image.data"
    ]
    assert fields(
        image(prompt="a", input_image=job_pb2.InputImage(data=png(), mime_type="image/webp"))
    ) == ["image.input_image.mime_type"]
    assert fields(video(prompt="a", input_image=job_pb2.InputImage(data=b"\0" * 300_000))) == [
        "video.input_image.data"
    ]
    assert fields(image(prompt="a", input_image=job_pb2.InputImage(data=png(), key="x"))) == [
        "image.input_image.key"
    ]


def test_inline_images_over_the_inline_limit_are_sent_to_create_input_upload() -> None:
    small = replace(LIMITS, max_inline_image_bytes=1024)
    data = png(64, 64, "BMP")[:2000]  # over 1024 bytes; not looked at further
    with pytest.raises(RpcError) as caught:
        validation.create_request(
            image(prompt="a", input_image=job_pb2.InputImage(data=data)), small
        )
    [(field, description)] = caught.value.violations
    assert field == "image.input_image.data"
    assert "at most 1024 bytes inline" in description and "CreateInputUpload" in description
    # Inline images off altogether.
    off = replace(LIMITS, max_inline_image_bytes=0)
    with pytest.raises(RpcError) as caught:
        validation.create_request(
            image(prompt="a", input_image=job_pb2.InputImage(data=png())), off
        )
    assert [f for f, _ in caught.value.violations] == ["image.input_image.data"]


def test_an_upload_id_is_checked_for_form_only() -> None:
    upload_id = "4b0f7c39-5d0c-4a5e-9a53-2a6b5a0c1f00"
    ok = validation.create_request(
        video(prompt="a", input_image=job_pb2.InputImage(upload_id=upload_id)), LIMITS
    )
    assert str(ok.upload_id) == upload_id and ok.image is None
    assert ok.input_field == "video.input_image"
    assert fields(image(prompt="a", input_image=job_pb2.InputImage(upload_id="nope"))) == [
        "image.input_image.upload_id"
    ]
    both = job_pb2.InputImage(upload_id=upload_id, data=png())
    assert fields(image(prompt="a", input_image=both)) == ["image.input_image.upload_id"]
    odd_type = job_pb2.InputImage(upload_id=upload_id, mime_type="image/gif")
    assert fields(image(prompt="a", input_image=odd_type)) == ["image.input_image.mime_type"]
    assert fields(image(prompt="a", input_image=job_pb2.InputImage())) == ["image.input_image.data"]


@pytest.mark.parametrize(
    ("mime_type", "byte_size", "bad"),
    [
        ("image/png", 1, []),
        ("image/webp", 200_000, []),
        ("image/gif", 10, ["mime_type"]),
        ("", 10, ["mime_type"]),
        ("image/png", 0, ["byte_size"]),
        ("image/png", -5, ["byte_size"]),
        ("image/png", 200_001, ["byte_size"]),
        ("text/plain", 2**62, ["mime_type", "byte_size"]),
    ],
)
def test_input_upload_requests(mime_type: str, byte_size: int, bad: list[str]) -> None:
    request = job_service_pb2.CreateInputUploadRequest(mime_type=mime_type, byte_size=byte_size)
    if not bad:
        validation.input_upload_request(request, LIMITS)
        return
    with pytest.raises(RpcError) as caught:
        validation.input_upload_request(request, LIMITS)
    assert [f for f, _ in caught.value.violations] == bad


def test_list_page_size_is_coerced_and_filters_checked() -> None:
    assert validation.list_request(job_service_pb2.ListJobsRequest(), LIMITS) == 20
    assert validation.list_request(job_service_pb2.ListJobsRequest(page_size=5000), LIMITS) == 100
    with pytest.raises(RpcError):
        validation.list_request(job_service_pb2.ListJobsRequest(page_size=-1), LIMITS)
    with pytest.raises(RpcError):
        validation.list_request(job_service_pb2.ListJobsRequest(status=42), LIMITS)


def test_complete_request_checks_outputs() -> None:
    job_id = "01a209ac-9f4e-7224-8e25-1337f2bc5bcc"
    good = job_pb2.Output(
        index=0,
        bucket="b",
        key=f"jobs/{job_id}/1/output-0.png",
        content_type="image/png",
        byte_size=1,
        width=1,
        height=1,
        sha256="00",
    )
    ok = worker_service_pb2.CompleteJobRequest(
        job_id=job_id, attempt=1, success=worker_service_pb2.JobSuccess(outputs=[good])
    )
    validation.complete_request(ok)
    for bad in [
        worker_service_pb2.CompleteJobRequest(job_id=job_id, attempt=1),
        worker_service_pb2.CompleteJobRequest(job_id=job_id, attempt=0, success=ok.success),
        worker_service_pb2.CompleteJobRequest(
            job_id=job_id, attempt=1, success=worker_service_pb2.JobSuccess()
        ),
        worker_service_pb2.CompleteJobRequest(
            job_id=job_id, attempt=1, failure=worker_service_pb2.JobFailure(code=0)
        ),
        # Another job's object, too many outputs, a duration that is not a number.
        _with_output(ok, key="jobs/01a209ac-9f4e-7224-8e25-000000000000/1/output-0.png"),
        _with_output(ok, key="output-0.png"),
        _with_output(ok, duration_seconds=float("nan")),
        _with_generation_seconds(ok, 2**62),  # would overflow the column
        _with_generation_seconds(ok, -1),
        worker_service_pb2.CompleteJobRequest(
            job_id=job_id,
            attempt=1,
            success=worker_service_pb2.JobSuccess(
                outputs=[_with_output(ok, index=i).success.outputs[0] for i in range(5)]
            ),
        ),
    ]:
        with pytest.raises(RpcError):
            validation.complete_request(bad)


def _with_output(
    request: worker_service_pb2.CompleteJobRequest, **changes: object
) -> worker_service_pb2.CompleteJobRequest:
    changed = worker_service_pb2.CompleteJobRequest()
    changed.CopyFrom(request)
    for name, value in changes.items():
        setattr(changed.success.outputs[0], name, value)
    return changed


def _with_generation_seconds(
    request: worker_service_pb2.CompleteJobRequest, seconds: int
) -> worker_service_pb2.CompleteJobRequest:
    changed = worker_service_pb2.CompleteJobRequest()
    changed.CopyFrom(request)
    changed.success.generation_time.seconds = seconds
    return changed
