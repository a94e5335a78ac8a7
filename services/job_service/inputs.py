"""Input images: job_service's S3 work for them, and the bytes of them a process may hold.

A client sends a small image inline in CreateJob (stored here at the job's input key) or uploads
any image itself: CreateInputUpload records the upload (input_uploads: whose it is) and presigns a
PUT to keys.upload_key, whose signature fixes the body's type and size; CreateJob then claims the
upload, checks the object (HEAD, and the header of its first bytes: type, dimensions) and copies
it to the job's input key inside S3, so its bytes never pass through this process.

Every S3 call runs in the S3 bulkhead (a storage that hangs holds its threads only; a call it does
not answer in time is UNAVAILABLE with RetryInfo); SQL goes through database.call.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, exists, func, insert, select, text, update

from services.common import images, keys
from services.common.bulkhead import Bulkhead, BulkheadTimeout
from services.common.errors import RpcError, invalid_argument, unavailable
from services.job_service.database import call
from services.job_service.schema import input_uploads, jobs

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# What a client is told to wait before retrying when storage or the byte budget is busy.
RETRY_AFTER_SECONDS = 1.0
# A claim whose job never came to be (the create failed, or its process died) may be taken over
# after this long: far beyond what a create takes, bulkhead timeouts included.
CLAIM_LEASE_SECONDS = 120
# How much of an uploaded object is read for its header. Pillow finds a PNG's or WEBP's size in
# the first bytes; a JPEG's comes after its APPn segments (EXIF, ICC profile), which a camera may
# make larger than the first read, hence the second.
HEADER_READS = (64 * 1024, 512 * 1024)


class ByteBudget:
    """Bytes of input images held by the calls of one process, bounded. Taking more than is left
    fails at once (RESOURCE_EXHAUSTED with RetryInfo): waiting calls would hold their bytes too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> Held:
        # A request larger than the whole budget (it will fail validation) takes all of it, so it
        # still runs, alone.
        size = min(size, self.limit)
        if self.held + size > self.limit:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server holds as many input image bytes as it may "
                f"(MAX_INPUT_BYTES_IN_FLIGHT, {self.limit}); retry in a second",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        self.held += size
        return Held(self, size)


class Held:
    """Bytes taken from a ByteBudget; `release` (idempotent) gives them back."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    def release(self) -> None:
        self._budget.held -= self._size
        self._size = 0


@dataclass(frozen=True)
class NewUpload:
    upload_id: str
    url: str  # presigned PUT
    headers: dict[str, str]  # to send with the PUT
    expire_time: dt.datetime


@dataclass(frozen=True)
class Claimed:
    """An upload copied to a job's input key."""

    upload_id: uuid.UUID
    bucket: str
    key: str
    mime_type: str


class Taken(enum.Enum):
    """Why an upload could not be claimed (besides not being the caller's)."""

    USED = "used"  # by a job that exists
    BUSY = "busy"  # by a create still under way (or one that failed a moment ago)


class UploadTaken(Exception):
    def __init__(self, why: Taken) -> None:
        super().__init__(why.value)
        self.why = why


@dataclass(frozen=True)
class _Declared:
    mime_type: str
    byte_size: int


class UploadRows:
    """The input_uploads table. Methods block; callers run them through database.call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def insert(self, upload_id: uuid.UUID, owner: str, mime_type: str, byte_size: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(input_uploads).values(
                    id=upload_id, owner=owner, mime_type=mime_type, byte_size=byte_size
                )
            )

    def claim(
        self, upload_id: uuid.UUID, owner: str, job_id: uuid.UUID
    ) -> _Declared | Taken | None:
        """Marks the owner's upload as the job's, in one statement (two creates cannot both
        have it). None: no upload of this owner by that ID."""
        row = input_uploads.c
        stale = row.used_at < func.now() - text(f"interval '{CLAIM_LEASE_SECONDS} seconds'")
        job_exists = exists().where(jobs.c.id == row.used_by)
        with self._engine.begin() as conn:
            claimed = conn.execute(
                update(input_uploads)
                .where(row.id == upload_id, row.owner == owner)
                .where(row.used_by.is_(None) | (stale & ~job_exists))
                .values(used_by=job_id, used_at=func.now())
                .returning(row.mime_type, row.byte_size)
            ).first()
            if claimed is not None:
                return _Declared(claimed.mime_type, claimed.byte_size)
            found = conn.execute(
                select(job_exists.label("used")).where(row.id == upload_id, row.owner == owner)
            ).first()
        if found is None:
            return None
        return Taken.USED if found.used else Taken.BUSY

    def release(self, upload_id: uuid.UUID, job_id: uuid.UUID) -> None:
        """Undoes the job's claim (its create did not happen)."""
        with self._engine.begin() as conn:
            conn.execute(
                update(input_uploads)
                .where(input_uploads.c.id == upload_id, input_uploads.c.used_by == job_id)
                .values(used_by=None, used_at=None)
            )


class InputImages:
    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        public_s3: S3Client,
        bulkhead: Bulkhead,
        rows: UploadRows,
        *,
        url_ttl_seconds: int,
        max_input_image_bytes: int,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._public = public_s3  # its endpoint is the one clients reach (S3_PUBLIC_ENDPOINT_URL)
        self._bulkhead = bulkhead
        self._rows = rows
        self._ttl = url_ttl_seconds
        self._max_bytes = max_input_image_bytes

    @property
    def bucket(self) -> str:
        return self._bucket

    async def _s3_call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await self._bulkhead.run(fn, *args, **kwargs)
        except BulkheadTimeout as exc:
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE,
                "object storage did not answer in time; retry later",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            ) from exc
        except (BotoCoreError, ClientError) as exc:
            raise unavailable("object storage is unavailable; retry later") from exc

    # --- inline images -------------------------------------------------------------------------

    async def store(self, job_id: uuid.UUID, data: bytes, mime_type: str) -> str:
        """Stores an inline image at the job's input key; returns the key."""
        key = keys.input_key(str(job_id))
        await self._s3_call(
            self._s3.put_object, Bucket=self._bucket, Key=key, Body=data, ContentType=mime_type
        )
        return key

    async def delete(self, key: str) -> None:
        """Removes an input nothing will use (a create that did not happen); best effort."""
        try:
            await self._s3_call(self._s3.delete_object, Bucket=self._bucket, Key=key)
        except RpcError:
            log.warning("could not delete an input image no job uses: %s", key)

    # --- uploads -------------------------------------------------------------------------------

    async def new_upload(self, owner: str, mime_type: str, byte_size: int) -> NewUpload:
        # Random, not time-ordered: nothing about an upload's ID tells anything.
        upload_id = uuid.uuid4()
        await call(self._rows.insert, upload_id, owner, mime_type, byte_size)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._ttl)
        # Signing is local computation. ContentType and ContentLength become signed headers, so
        # S3 refuses a body of another type or size.
        url = self._public.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self._bucket,
                "Key": keys.upload_key(str(upload_id)),
                "ContentType": mime_type,
                "ContentLength": byte_size,
            },
            ExpiresIn=self._ttl,
        )
        return NewUpload(str(upload_id), url, {"Content-Type": mime_type}, expires)

    async def claim(
        self,
        upload_id: uuid.UUID,
        owner: str,
        job_id: uuid.UUID,
        field: str,
        mime_type: str = "",
    ) -> Claimed:
        """Takes the owner's upload for the job: checks the object and copies it to the job's
        input key. Raises INVALID_ARGUMENT naming `field`.upload_id (not the caller's upload, or
        nothing valid uploaded: the claim is undone then) or UploadTaken."""
        found = await call(self._rows.claim, upload_id, owner, job_id)
        if found is None:
            raise invalid_argument([(f"{field}.upload_id", "is not an upload of yours")])
        if isinstance(found, Taken):
            raise UploadTaken(found)
        try:
            source = keys.upload_key(str(upload_id))
            await self._check(source, found, field, mime_type)
            key = keys.input_key(str(job_id))
            await self._s3_call(
                self._s3.copy_object,
                Bucket=self._bucket,
                Key=key,
                CopySource={"Bucket": self._bucket, "Key": source},
            )
        except BaseException:
            await self._release(upload_id, job_id)
            raise
        return Claimed(upload_id, self._bucket, key, found.mime_type)

    async def _check(self, source: str, declared: _Declared, field: str, mime_type: str) -> None:
        """The uploaded object is what was declared, and an image we may decode."""
        where = f"{field}.upload_id"
        if mime_type and mime_type != declared.mime_type:
            raise invalid_argument(
                [(f"{field}.mime_type", f"is {mime_type} but the upload is {declared.mime_type}")]
            )
        if declared.byte_size > self._max_bytes:  # the limit was lowered since the upload
            raise invalid_argument(
                [(where, f"is larger than {self._max_bytes} bytes (MAX_INPUT_IMAGE_BYTES)")]
            )
        head = await self._s3_call(self._head, source)
        if head is None:
            raise invalid_argument(
                [(where, "has no image yet: PUT it to the URL CreateInputUpload returned first")]
            )
        size, content_type = head
        if size != declared.byte_size or content_type != declared.mime_type:
            raise invalid_argument(
                [
                    (
                        where,
                        f"holds {size} bytes of {content_type or 'no type'}, not the "
                        f"{declared.byte_size} bytes of {declared.mime_type} declared",
                    )
                ]
            )
        header = None
        for length in HEADER_READS:
            start = await self._s3_call(self._read_start, source, length)
            header = images.read_header(start)
            if header is not None or len(start) < length:
                break
        if header is None:
            raise invalid_argument([(where, "is not a PNG, JPEG or WEBP image")])
        if header.content_type != declared.mime_type:
            raise invalid_argument(
                [(where, f"is a {header.content_type} image, not {declared.mime_type}")]
            )
        too_large = header.too_large()  # a decompression bomb: the same rule as inline data
        if too_large is not None:
            raise invalid_argument([(where, too_large)])

    def _head(self, key: str) -> tuple[int, str] | None:
        """(size, content type) of the object; None when there is none (blocking: runs in the
        bulkhead)."""
        try:
            head = self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return head["ContentLength"], head.get("ContentType", "")

    def _read_start(self, key: str, length: int) -> bytes:
        """The first `length` bytes of the object (blocking: runs in the bulkhead, body and
        all)."""
        got = self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes=0-{length - 1}")
        with got["Body"] as body:
            return body.read(length)

    async def _release(self, upload_id: uuid.UUID, job_id: uuid.UUID) -> None:
        try:
            await call(self._rows.release, upload_id, job_id)
        except RpcError:  # the claim goes stale and can be taken over later
            log.warning("could not release the claim of upload %s", upload_id)

    async def release(self, claimed: Claimed, job_id: uuid.UUID) -> None:
        """Frees the upload for another create, the job's copy left in place (a create whose
        outcome is unknown)."""
        await self._release(claimed.upload_id, job_id)

    async def unclaim(self, claimed: Claimed, job_id: uuid.UUID) -> None:
        """Undoes a claim whose create did not happen: the job's copy goes, the upload stays
        usable."""
        await self.delete(claimed.key)
        await self._release(claimed.upload_id, job_id)

    async def finish(self, claimed: Claimed) -> None:
        """After the job was created from the upload: the upload object is not needed any more
        (the job has its own copy); best effort."""
        await self.delete(keys.upload_key(str(claimed.upload_id)))
