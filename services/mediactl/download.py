"""Saving a finished job's outputs to disk through the presigned URLs GetJob mints.

Each output is streamed to a hidden temporary file next to its destination while its sha256 is
computed, and takes its name `<job_id>-<index>.<ext>` only once the digest (and the size) match
the job's output record; a mismatch, or anything that cuts the transfer short, leaves nothing
behind. `make run` (devstack/demo.py) uses this module too, through the CLI.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from media.v1 import job_pb2
from services.common.keys import EXTENSIONS
from services.common.lifecycle import SUCCEEDED, status_name

CHUNK_BYTES = 1 << 20  # what is held in memory at a time, whatever the file's size
_SAFE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")  # a job ID fit to be part of a file name
_KEY_EXTENSION = re.compile(r"\.([a-z0-9]{1,5})$")

# Opens a URL for reading with a timeout (urllib.request.urlopen, or a test's stand-in).
Opener = Callable[[str, float], BinaryIO]


class DownloadError(Exception):
    """An output that could not be saved, or whose bytes do not match its record."""


@dataclass(frozen=True)
class Saved:
    index: int
    path: Path
    byte_size: int


def refusal(job: job_pb2.Job) -> str | None:
    """Why this job's outputs cannot be saved, or None when they can."""
    if job.status != SUCCEEDED:
        return (
            f"job {job.id} is {status_name(job.status)}, not SUCCEEDED: "
            "only a succeeded job has outputs to download"
        )
    if not job.outputs:
        return f"job {job.id} has no outputs"
    return None


def file_name(job_id: str, output: job_pb2.Output) -> str:
    """`<job_id>-<index>.<ext>`, the extension from the content type (else the object key)."""
    if not _SAFE_ID.fullmatch(job_id):
        raise DownloadError(f"job ID {job_id!r} cannot be part of a file name")
    extension = EXTENSIONS.get(output.content_type)
    if extension is None:
        match = _KEY_EXTENSION.search(output.key)
        extension = match.group(1) if match else "bin"
    return f"{job_id}-{output.index}.{extension}"


def _urlopen(url: str, timeout: float) -> BinaryIO:
    return cast(BinaryIO, urllib.request.urlopen(url, timeout=timeout))


def save_output(
    job_id: str,
    output: job_pb2.Output,
    directory: Path,
    *,
    timeout: float,
    opener: Opener = _urlopen,
) -> Saved:
    """Streams one output into `directory`; raises DownloadError (and leaves no file) when it
    cannot be fetched or its bytes are not the recorded ones."""
    name = file_name(job_id, output)
    label = f"output #{output.index}"
    if not output.url:
        raise DownloadError(f"{label}: no download URL in the job")
    # Presigned URLs are http(s); anything else (file:, ftp:) is refused rather than followed.
    if urllib.parse.urlsplit(output.url).scheme not in ("http", "https"):
        raise DownloadError(f"{label}: not an http(s) URL")
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / name
    # Hidden, unique and in the same directory: a reader never sees a partial file under the
    # real name, two downloads never share one, and the final rename stays on one file system.
    partial = directory / f".{name}.{secrets.token_hex(4)}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with opener(output.url, timeout) as response, open(partial, "xb") as file:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                file.write(chunk)
        _check(label, output, digest.hexdigest(), size)
        os.replace(partial, destination)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{label}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{label}: {exc.reason}") from None
    except OSError as exc:  # the disk, or a connection that broke or timed out mid-transfer
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{label}: {exc.strerror or exc}") from None
    except BaseException:  # a mismatch, Ctrl-C: nothing half-written is left behind
        partial.unlink(missing_ok=True)
        raise
    return Saved(output.index, destination, size)


def _check(label: str, output: job_pb2.Output, sha256: str, size: int) -> None:
    if output.byte_size and size != output.byte_size:
        raise DownloadError(
            f"{label}: got {size} bytes, the job records {output.byte_size}; file removed"
        )
    if not output.sha256:
        raise DownloadError(f"{label}: the job records no sha256 to check against; file removed")
    if sha256 != output.sha256.lower():
        raise DownloadError(
            f"{label}: sha256 mismatch: got {sha256}, the job records {output.sha256}; file removed"
        )


def save_outputs(
    job: job_pb2.Job,
    directory: Path,
    *,
    timeout: float,
    on_saved: Callable[[Saved], None],
    on_failed: Callable[[DownloadError], None],
    opener: Opener = _urlopen,
) -> list[Saved]:
    """Saves every output of a SUCCEEDED job (the caller checks `refusal` first), going on past
    a failed one so that one bad file does not cost the others. Returns those saved; the job's
    outputs less those are the failures, each reported to `on_failed`."""
    saved: list[Saved] = []
    for output in sorted(job.outputs, key=lambda o: o.index):
        try:
            result = save_output(job.id, output, directory, timeout=timeout, opener=opener)
        except DownloadError as exc:
            on_failed(exc)
            continue
        saved.append(result)
        on_saved(result)
    return saved


def saved_files(directory: Path, job_id: str) -> list[Path]:
    """The files `save_outputs` left in `directory` for one job, by output index."""

    def index(path: Path) -> int:
        return int(path.stem.removeprefix(f"{job_id}-"))

    found = [
        path
        for path in directory.glob(f"{job_id}-*.*")
        if path.stem.removeprefix(f"{job_id}-").isdigit()
    ]
    return sorted(found, key=index)
