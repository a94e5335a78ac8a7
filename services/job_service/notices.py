"""What a finished job's notification says: a short title ("2 images ready", "Video failed") and
a one-line message (the prompt, or why it failed). Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from media.v1 import job_pb2
from services.common import lifecycle

# A message fits one line of a phone's notification.
MAX_MESSAGE_CHARS = 80

# Why a job failed, in words an owner can act on; codes without a phrase show the error message.
_CAUSES: dict[lifecycle.ErrorCode, str] = {
    job_pb2.ERROR_CODE_INTERNAL: "an internal error",
    job_pb2.ERROR_CODE_SAFETY_BLOCKED: "blocked by safety filters",
    job_pb2.ERROR_CODE_NO_MEDIA: "the model returned no media",
    job_pb2.ERROR_CODE_INVALID_REQUEST: "the model refused the request",
    job_pb2.ERROR_CODE_RATE_LIMITED: "the model is rate limited; try again later",
    job_pb2.ERROR_CODE_UPSTREAM_UNAVAILABLE: "the model is unavailable; try again later",
    job_pb2.ERROR_CODE_DEADLINE_EXCEEDED: "generation took too long",
    job_pb2.ERROR_CODE_UPLOAD_FAILED: "the result could not be stored",
    job_pb2.ERROR_CODE_ATTEMPTS_EXHAUSTED: "attempts exhausted",
}
_NOUNS = {lifecycle.IMAGE: ("Image", "images"), lifecycle.VIDEO: ("Video", "videos")}


@dataclass(frozen=True)
class Notice:
    title: str
    message: str


def notice(job: job_pb2.Job) -> Notice | None:
    """The notice of a finished job (None: the job is not finished)."""
    one, many = _NOUNS.get(job.kind, ("Job", "results"))
    if job.status == lifecycle.SUCCEEDED:
        count = len(job.outputs)
        title = f"{count} {many} ready" if count > 1 else f"{one} ready"
        prompt = job.image.prompt if job.HasField("image") else job.video.prompt
        return Notice(title, shorten(prompt))
    if job.status == lifecycle.FAILED:
        cause = _CAUSES.get(job.error.code) or shorten(job.error.message) or "failed"
        return Notice(f"{one} failed", cause)
    if job.status == lifecycle.CANCELED:
        return Notice(f"{one} canceled", "canceled by the owner")
    return None


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (whitespace collapsed), cut at a word to at most `limit` characters
    with an ellipsis when it is longer."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if " " in cut[limit // 2 :]:  # end at a word when one ends in the second half
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.-") + "…"
