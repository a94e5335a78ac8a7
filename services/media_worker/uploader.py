"""Moving files between the worker and object storage: outputs up, the input image down, and
away the outputs no record will ever point to.

boto3 blocks, so every call runs through asyncio.to_thread. `upload_file` streams from disk and
switches to multipart above the threshold, so a large video is never read into memory whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from media.v1 import job_pb2
from services.common import keys
from services.common.backoff import backoff_delay
from services.common.tasks import gather_all
from services.media_worker.generators.base import GeneratedFile
from services.media_worker.media_probe import MediaInfo, probe_file

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_RETRY_BASE_SECONDS = 0.5
_RETRY_CAP_SECONDS = 8.0
_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024,
    multipart_chunksize=16 * 1024 * 1024,
    max_concurrency=4,
)


class UploadError(Exception):
    """An output could not be stored after every attempt. Its text names keys, files and
    endpoints: for the logs, never for the job (generation.py says what failed in plain words)."""


class InputImageError(Exception):
    """The input image could not be fetched or used. permanent: retrying will not help.

    `public` is what the job's owner is told: plain words without keys, endpoints or paths;
    `detail` (in str(exc), for the logs) may hold those."""

    def __init__(self, public: str, *, permanent: bool, detail: str = "") -> None:
        super().__init__(f"{public} ({detail})" if detail else public)
        self.public = public
        self.permanent = permanent


def _error_code(exc: BaseException) -> str:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ClientError):
            return str(current.response.get("Error", {}).get("Code", ""))
        # boto3 wraps ClientError in S3UploadFailedError
        current = current.__cause__ or current.__context__
    return ""


def _permanent(exc: Exception) -> bool:
    if isinstance(exc, InputImageError):
        return exc.permanent
    return _error_code(exc) in _MISSING


class Storage:
    def __init__(self, client: S3Client, bucket: str, *, attempts: int) -> None:
        self._client = client
        self._bucket = bucket
        self._attempts = attempts

    @property
    def bucket(self) -> str:
        return self._bucket

    async def _retry(self, what: str, job_id: str, fn: Callable[[], _T]) -> _T:
        for attempt in range(1, self._attempts + 1):
            try:
                return await asyncio.to_thread(fn)
            except Exception as exc:
                if attempt == self._attempts or _permanent(exc):
                    raise
                delay = backoff_delay(attempt, _RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS)
                log.warning(
                    "%s failed (attempt %d of %d), retrying in %.2f s: %s",
                    what,
                    attempt,
                    self._attempts,
                    delay,
                    exc,
                    extra={"job_id": job_id},
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def upload_one(
        self, job_id: str, attempt: int, index: int, path: Path, info: MediaInfo
    ) -> job_pb2.Output:
        # No ValueError: probe_file accepts only the content types keys.EXTENSIONS names.
        key = keys.output_key(job_id, attempt, index, info.content_type)

        def upload() -> None:
            self._client.upload_file(
                str(path),
                self._bucket,
                key,
                ExtraArgs={"ContentType": info.content_type},
                Config=_TRANSFER,
            )

        try:
            await self._retry(f"upload of {key}", job_id, upload)
        except Exception as exc:
            raise UploadError(f"could not store output {index} at {key}: {exc}") from exc
        log.info(
            "output stored",
            extra={"job_id": job_id, "key": key, "bytes": info.byte_size},
        )
        # MediaInfo's fields are the rest of what an Output stores (its URL is minted at read time).
        return job_pb2.Output(index=index, bucket=self._bucket, key=key, **dataclasses.asdict(info))

    async def store_outputs(
        self, job_id: str, attempt: int, files: list[GeneratedFile]
    ) -> list[job_pb2.Output]:
        """Probes every file (raising ProbeError on a bad one) and uploads them concurrently.

        All files are probed before the first upload, so a bad file stores nothing.
        """
        infos = await asyncio.gather(
            *(asyncio.to_thread(probe_file, f.path, f.content_type) for f in files)
        )
        # One failed (or we were cancelled): the rest stop and the first error is raised as is.
        return await gather_all(
            self.upload_one(job_id, attempt, index, f.path, info)
            for index, (f, info) in enumerate(zip(files, infos, strict=True))
        )

    async def discard_outputs(self, job_id: str, attempts: Container[int], why: str) -> int:
        """Deletes the job's output objects of the attempts in `attempts`; the number deleted.

        For outputs nothing records: those of an attempt that died or was refused, or of a job
        that ended without outputs. Best effort: a failure is logged, not raised; the caller's
        job goes on either way.
        """

        def discard() -> int:
            found: list[str] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=keys.job_prefix(job_id)):
                for item in page.get("Contents", ()):
                    # Outputs only: the job's input image and anything foreign stay.
                    output = keys.parse_output_key(item["Key"])
                    if output and output.job_id == job_id and output.attempt in attempts:
                        found.append(item["Key"])
            for start in range(0, len(found), 1000):  # DeleteObjects takes 1000 keys at most
                chunk = found[start : start + 1000]
                self._client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            return len(found)

        try:
            deleted = await asyncio.to_thread(discard)
        except Exception as exc:
            log.warning(
                "could not delete unrecorded outputs (%s): %s", why, exc, extra={"job_id": job_id}
            )
            return 0
        if deleted:
            log.info("deleted %d unrecorded output(s) (%s)", deleted, why, extra={"job_id": job_id})
        return deleted

    async def download_input(
        self, job_id: str, bucket: str, key: str, max_bytes: int
    ) -> tuple[bytes, str]:
        """The input image's bytes and stored content type, refusing anything over max_bytes."""

        def download() -> tuple[bytes, str]:
            response = self._client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                length = int(response.get("ContentLength") or 0)
                if length > max_bytes:
                    raise InputImageError(
                        f"the input image is {length} bytes, over the {max_bytes} byte limit",
                        permanent=True,
                    )
                # Read one byte past the cap so a store that misreports the length is caught too.
                data = body.read(max_bytes + 1)
            finally:
                body.close()
            if len(data) > max_bytes:
                raise InputImageError(
                    f"the input image is over the {max_bytes} byte limit", permanent=True
                )
            return data, str(response.get("ContentType") or "")

        try:
            return await self._retry(f"download of {bucket}/{key}", job_id, download)
        except InputImageError:
            raise
        except Exception as exc:
            missing = _error_code(exc) in _MISSING
            public = (
                "the input image is no longer in storage"
                if missing
                else "the input image could not be read from storage"
            )
            raise InputImageError(
                public, permanent=missing, detail=f"fetching {bucket}/{key}: {exc}"
            ) from exc
