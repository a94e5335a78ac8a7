"""The object-key layout of the bucket: every key is built (and recognised) here.

    jobs/<job_id>/input                                the input image a CreateJob stored
    jobs/<job_id>/<attempt>/output-<index>.<ext>       an output of one attempt
    uploads/<upload_id>                                an image a client PUT (CreateInputUpload)

Keys never carry user identity. The attempt is part of an output key so that a stale attempt
finishing late can never overwrite the outputs of the attempt that was recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOBS_PREFIX = "jobs/"
# Client uploads waiting for the CreateJob that copies them to a job's input key. Whose they are
# is kept in Postgres (input_uploads), never in the key.
UPLOADS_PREFIX = "uploads/"

# Content type -> file extension of the outputs we store.
EXTENSIONS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}

_OUTPUT = re.compile(r"jobs/([0-9a-f-]{36})/([1-9][0-9]{0,5})/output-([0-9]{1,3})\.([a-z0-9]{1,5})")


def job_prefix(job_id: str) -> str:
    """Everything stored for one job is under this prefix."""
    return f"{JOBS_PREFIX}{job_id}/"


def input_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}input"


def upload_key(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}"


def output_key(job_id: str, attempt: int, index: int, content_type: str) -> str:
    """Raises ValueError for a content type we do not store."""
    extension = EXTENSIONS.get(content_type)
    if extension is None:
        raise ValueError(f"unsupported content type {content_type!r}")
    return f"{job_prefix(job_id)}{attempt}/output-{index}.{extension}"


@dataclass(frozen=True)
class OutputKey:
    job_id: str
    attempt: int
    index: int


def parse_output_key(key: str) -> OutputKey | None:
    """The parts of an output key, or None for anything else (an input, a foreign object).

    Round-trips: a key is an output key only if building it again gives the very same string, so
    `..`, doubled slashes and other spellings that a URL or a browser might normalise are not."""
    match = _OUTPUT.fullmatch(key)
    if match is None:
        return None
    job_id, attempt, index, ext = match.groups()
    parsed = OutputKey(job_id, int(attempt), int(index))
    if f"{job_prefix(job_id)}{parsed.attempt}/output-{parsed.index}.{ext}" != key:
        return None  # e.g. a leading zero
    return parsed


def is_output_key(key: str, job_id: str, attempt: int, index: int, content_type: str) -> bool:
    """Whether `key` is exactly where output `index` of that attempt belongs."""
    try:
        return key == output_key(job_id, attempt, index, content_type)
    except ValueError:
        return False
