"""What a finished job's notification says: its title by kind, count and outcome, and a one-line
message (the prompt, a phrase for the failure's cause, or the error message itself)."""

from __future__ import annotations

import pytest

from media.v1 import job_pb2
from services.common import lifecycle
from services.job_service.notices import MAX_MESSAGE_CHARS, Notice, notice, shorten


def image(status: int, outputs: int = 1, prompt: str = "a red fox") -> job_pb2.Job:
    job = job_pb2.Job(kind=job_pb2.MEDIA_KIND_IMAGE, status=status)  # type: ignore[arg-type]
    job.image.prompt = prompt
    job.outputs.extend(job_pb2.Output(index=i) for i in range(outputs))
    return job


def video(status: int, outputs: int = 1, prompt: str = "waves at dusk") -> job_pb2.Job:
    job = job_pb2.Job(kind=job_pb2.MEDIA_KIND_VIDEO, status=status)  # type: ignore[arg-type]
    job.video.prompt = prompt
    job.outputs.extend(job_pb2.Output(index=i) for i in range(outputs))
    return job


def failed(job: job_pb2.Job, code: int, message: str = "") -> job_pb2.Job:
    job.error.code = code  # type: ignore[assignment]
    job.error.message = message
    return job


def test_success_counts_the_outputs_and_quotes_the_prompt() -> None:
    assert notice(image(lifecycle.SUCCEEDED, 2)) == Notice("2 images ready", "a red fox")
    assert notice(image(lifecycle.SUCCEEDED, 1)) == Notice("Image ready", "a red fox")
    assert notice(video(lifecycle.SUCCEEDED, 1)) == Notice("Video ready", "waves at dusk")
    assert notice(video(lifecycle.SUCCEEDED, 3)) == Notice("3 videos ready", "waves at dusk")


def test_a_long_prompt_is_shortened_to_one_line() -> None:
    prompt = "a lighthouse\non a cliff,   " + "storm clouds rolling in over the sea " * 5
    found = notice(image(lifecycle.SUCCEEDED, prompt=prompt))
    assert found is not None
    assert found.message.startswith("a lighthouse on a cliff, storm clouds rolling in")
    assert found.message.endswith("…") and "\n" not in found.message
    assert len(found.message) <= MAX_MESSAGE_CHARS
    # Cut at a word: what precedes the ellipsis is a whole word of the prompt.
    assert found.message[:-1].split()[-1] in prompt.split()


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (job_pb2.ERROR_CODE_SAFETY_BLOCKED, "blocked by safety filters"),
        (job_pb2.ERROR_CODE_NO_MEDIA, "the model returned no media"),
        (job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED, "attempts exhausted"),
        (job_pb2.ERROR_CODE_DEADLINE_EXCEEDED, "generation took too long"),
    ],
)
def test_a_failure_says_its_cause(code: int, cause: str) -> None:
    detail = "attempts exhausted after 3: upstream said 503 with a long body"
    assert notice(failed(video(lifecycle.FAILED), code, detail)) == Notice("Video failed", cause)
    assert notice(failed(image(lifecycle.FAILED), code, detail)) == Notice("Image failed", cause)


def test_a_failure_without_a_phrase_shows_its_message_shortened() -> None:
    message = "the generator raised ValueError: " + "x" * 200
    found = notice(failed(image(lifecycle.FAILED), job_pb2.ERROR_CODE_GENERATION_FAILED, message))
    assert found == Notice("Image failed", shorten(message))
    assert len(found.message) == MAX_MESSAGE_CHARS and found.message.endswith("…")
    no_message = failed(image(lifecycle.FAILED), job_pb2.ERROR_CODE_CONFIGURATION)
    assert notice(no_message) == Notice("Image failed", "failed")


def test_a_cancel_says_who() -> None:
    assert notice(video(lifecycle.CANCELED)) == Notice("Video canceled", "canceled by the owner")
    assert notice(image(lifecycle.CANCELED)) == Notice("Image canceled", "canceled by the owner")


def test_an_unfinished_job_has_no_notice() -> None:
    assert notice(image(lifecycle.QUEUED)) is None
    assert notice(video(lifecycle.RUNNING)) is None


def test_shorten_keeps_short_text_and_cuts_long_words() -> None:
    assert shorten("  two\twords ") == "two words"
    assert shorten("") == ""
    assert shorten("y" * 200) == "y" * (MAX_MESSAGE_CHARS - 1) + "…"
