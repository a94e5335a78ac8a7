"""mediactl: progress bar, job details, job table and the watch display."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from media.v1 import job_pb2, job_service_pb2
from services.mediactl import render

JOB_ID = "01935f3e-7a00-7000-8000-000000000001"
SHA = "ab" * 32


def _ts(text: str) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return value


def _succeeded_image_job() -> job_pb2.Job:
    generation = duration_pb2.Duration()
    generation.FromTimedelta(timedelta(milliseconds=1250))
    return job_pb2.Job(
        id=JOB_ID,
        kind=job_pb2.MEDIA_KIND_IMAGE,
        status=job_pb2.JOB_STATUS_SUCCEEDED,
        progress=100,
        status_message="done",
        attempt=1,
        image=job_pb2.ImageParams(prompt="a red fox"),
        request_id="req-1",
        model="local-pillow",
        generation_time=generation,
        create_time=_ts("2025-03-01T10:00:00"),
        start_time=_ts("2025-03-01T10:00:01"),
        end_time=_ts("2025-03-01T10:00:03"),
        outputs=[
            job_pb2.Output(
                index=1,
                bucket="media",
                key=f"jobs/{JOB_ID}/output-1.png",
                content_type="image/png",
                byte_size=3 * 1024 * 1024 // 2,
                width=1024,
                height=768,
                sha256=SHA,
                url="https://s3.example/media/jobs/x/output-1.png?X-Amz-Signature=1",
                url_expire_time=_ts("2025-03-01T11:00:03"),
            ),
            job_pb2.Output(
                index=0,
                bucket="media",
                key=f"jobs/{JOB_ID}/output-0.png",
                content_type="image/png",
                byte_size=2048,
                width=1024,
                height=768,
                sha256=SHA,
                url="https://s3.example/media/jobs/x/output-0.png?X-Amz-Signature=0",
            ),
        ],
    )


@pytest.mark.parametrize(
    ("progress", "bar"),
    [
        (0, "[..........]"),
        (9, "[..........]"),
        (10, "[#.........]"),
        (50, "[#####.....]"),
        (99, "[#########.]"),
        (100, "[##########]"),
        (150, "[##########]"),
        (-5, "[..........]"),
    ],
)
def test_progress_bar(progress: int, bar: str) -> None:
    assert render.progress_bar(progress) == bar


def test_progress_line() -> None:
    job = job_pb2.Job(
        status=job_pb2.JOB_STATUS_RUNNING, progress=50, status_message="generating frame 12/96"
    )
    assert render.progress_line(job) == "[#####.....]  50% RUNNING generating frame 12/96"
    queued = job_pb2.Job(status=job_pb2.JOB_STATUS_QUEUED)
    assert render.progress_line(queued) == "[..........]   0% QUEUED"


def test_status_line_shows_the_failure() -> None:
    job = job_pb2.Job(
        status=job_pb2.JOB_STATUS_FAILED,
        progress=40,
        attempt=3,
        status_message="gave up",
        error=job_pb2.JobError(code=job_pb2.ERROR_CODE_SAFETY_BLOCKED, message="blocked prompt"),
    )
    assert render.status_line(job) == (
        "FAILED     40%  attempt 3  gave up  (SAFETY_BLOCKED: blocked prompt)"
    )


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (2048, "2.0 KiB"),
        (3 * 1024**2 // 2, "1.5 MiB"),
        (5 * 1024**3, "5.0 GiB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert render.human_bytes(size) == text


def test_render_job_shows_every_fact_and_each_output_in_index_order() -> None:
    text = render.render_job(_succeeded_image_job())
    lines = text.splitlines()
    assert lines[0] == f"job:       {JOB_ID}"
    for expected in (
        "kind:      image",
        "status:    SUCCEEDED",
        "progress:  100%  done",
        "attempt:   1",
        "model:     local-pillow",
        "prompt:    a red fox",
        "request:   req-1",
        "created:   2025-03-01 10:00:00Z",
        "started:   2025-03-01 10:00:01Z",
        "ended:     2025-03-01 10:00:03Z",
        "gen time:  1.25s",
        "outputs:   2",
        "  #0  image/png, 2.0 KiB, 1024x768",
        "  #1  image/png, 1.5 MiB, 1024x768",
        f"      sha256   {SHA}",
        "      url      https://s3.example/media/jobs/x/output-0.png?X-Amz-Signature=0",
        "      expires  2025-03-01 11:00:03Z",
    ):
        assert expected in lines, expected
    assert lines.index("  #0  image/png, 2.0 KiB, 1024x768") < lines.index(
        "  #1  image/png, 1.5 MiB, 1024x768"
    )
    assert "error" not in text


def test_render_job_video_output_and_failure() -> None:
    job = job_pb2.Job(
        id=JOB_ID,
        kind=job_pb2.MEDIA_KIND_VIDEO,
        status=job_pb2.JOB_STATUS_FAILED,
        video=job_pb2.VideoParams(prompt="waves"),
        error=job_pb2.JobError(code=job_pb2.ERROR_CODE_GENERATION_FAILED, message="boom"),
        outputs=[
            job_pb2.Output(
                index=0,
                bucket="media",
                key="jobs/x/output-0.mp4",
                content_type="video/mp4",
                byte_size=10,
                width=1280,
                height=720,
                duration_seconds=8.0,
            )
        ],
    )
    lines = render.render_job(job).splitlines()
    assert "error:     GENERATION_FAILED: boom" in lines
    assert "  #0  video/mp4, 10 B, 1280x720, 8.0s" in lines
    # No URL (a status event): say where the file is stored instead.
    assert "      stored   s3://media/jobs/x/output-0.mp4" in lines


def test_render_table_newest_first_as_given() -> None:
    older = job_pb2.Job(
        id="id-old",
        kind=job_pb2.MEDIA_KIND_VIDEO,
        status=job_pb2.JOB_STATUS_RUNNING,
        progress=30,
        video=job_pb2.VideoParams(prompt="a very long prompt\nwith a newline " + "x" * 80),
        create_time=_ts("2025-03-01T09:00:00"),
    )
    lines = render.render_table([_succeeded_image_job(), older]).splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATUS", "PROGRESS", "CREATED", "OUTPUTS", "PROMPT"]
    assert lines[1].startswith(JOB_ID)
    assert "SUCCEEDED" in lines[1] and "2025-03-01 10:00:00Z" in lines[1]
    assert lines[2].startswith("id-old")
    assert "\n" not in lines[2] and lines[2].endswith("…")
    # Columns line up.
    assert lines[0].index("KIND") == lines[1].index("image") == lines[2].index("video")
    assert render.render_table([]) == "no jobs"


def test_json_includes_fields_at_their_default() -> None:
    response = job_service_pb2.CreateJobResponse(
        job=job_pb2.Job(id=JOB_ID, status=job_pb2.JOB_STATUS_QUEUED), created=True
    )
    parsed = json.loads(render.to_json(response))
    assert parsed["created"] is True
    assert parsed["job"]["status"] == "JOB_STATUS_QUEUED"
    assert parsed["job"]["progress"] == 0
    assert "\n" not in render.to_json(response, compact=True)


def _job(status: int, progress: int = 0, message: str = "", attempt: int = 0) -> job_pb2.Job:
    return job_pb2.Job(status=status, progress=progress, status_message=message, attempt=attempt)


def _states() -> list[job_pb2.Job]:
    return [
        _job(job_pb2.JOB_STATUS_QUEUED),
        _job(job_pb2.JOB_STATUS_RUNNING, 0, "claimed", 1),
        _job(job_pb2.JOB_STATUS_RUNNING, 50, "generating frame 12/96", 1),
        _job(job_pb2.JOB_STATUS_RUNNING, 90, "encoding", 1),
        _job(job_pb2.JOB_STATUS_SUCCEEDED, 100, "done", 1),
    ]


def test_watch_display_without_a_tty_prints_one_line_per_status_change() -> None:
    out = io.StringIO()
    display = render.WatchDisplay(out, tty=False)
    for job in _states():
        display.update(job)
    display.end_line()
    assert out.getvalue().splitlines() == [
        "QUEUED      0%",
        "RUNNING     0%  attempt 1  claimed",
        "SUCCEEDED 100%  attempt 1  done",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_watch_display_on_a_tty_redraws_in_place() -> None:
    out = io.StringIO()
    display = render.WatchDisplay(out, tty=True)
    for job in _states():
        display.update(job)
    display.end_line()
    text = out.getvalue()
    # Each status keeps its own line; progress within a status is redrawn with \r.
    lines = text.split("\n")
    assert len(lines) == 4 and lines[-1] == ""
    assert lines[0] == "\r[..........]   0% QUEUED\x1b[K"
    running = lines[1].split("\r")[1:]
    assert [part.removesuffix("\x1b[K") for part in running] == [
        "[..........]   0% RUNNING claimed",
        "[#####.....]  50% RUNNING generating frame 12/96",
        "[#########.]  90% RUNNING encoding",
    ]
    assert lines[2] == "\r[##########] 100% SUCCEEDED done\x1b[K"
