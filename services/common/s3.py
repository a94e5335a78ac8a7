"""S3 clients (boto3), and a readiness probe of the bucket. Calls block: job_service runs them
in its S3 bulkhead (services.common.bulkhead), the worker through asyncio.to_thread.

A client's timeouts and retries bound how long one call can hold a thread when storage does not
answer: the thread is stuck for about max_attempts * (connect_timeout + read_timeout) plus the
retry backoff, whatever the caller's deadline. The defaults suit small objects (job_service's
input images, a HeadBucket); the worker's multipart uploads pass a longer read timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.bulkhead import Bulkhead, BulkheadTimeout
from services.common.config import S3Settings

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client


def make_client(
    settings: S3Settings,
    *,
    public: bool = False,
    max_pool: int = 32,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    max_attempts: int = 2,
) -> S3Client:
    """`read_timeout` is the longest wait for a socket read (an answer, or the next chunk of
    one), not for a whole transfer; `max_attempts` counts the first try."""
    endpoint = settings.public_endpoint_url if public else settings.endpoint_url
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=settings.region,
        config=Config(
            signature_version="s3v4",
            max_pool_connections=max_pool,
            # standard: retries throttling, 5xx and connection errors with jittered backoff;
            # "adaptive" would also sleep client-side to pace requests, holding threads longer.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Path-style URLs work with every S3-compatible store and with a plain host:port.
            s3={"addressing_style": "path"} if endpoint else {},
        ),
    )


def ensure_bucket(client: S3Client, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
        client.create_bucket(Bucket=bucket)


class BucketProbe:
    """Readiness check: does object storage answer? A HeadBucket on a client and a thread of its
    own, both bounded by `timeout_seconds` and without retries, so that a storage that hangs
    holds one thread here at most (a check that finds it still stuck fails at once), never one
    of the threads requests need, and a replica busy with requests is not reported unready.

    Any answer below 500 counts: readiness is about storage answering, not about permissions
    (HeadBucket needs s3:ListBucket, which job_service's credentials need not have)."""

    def __init__(self, settings: S3Settings, timeout_seconds: float) -> None:
        self._bucket = settings.bucket
        self._client = make_client(
            settings,
            max_pool=1,
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            max_attempts=1,
        )
        self._thread = Bulkhead("s3-probe", 1, timeout_seconds)

    async def __call__(self) -> bool:
        if self._thread.busy:
            return False  # the previous HeadBucket has not come back yet
        try:
            await self._thread.run(self._client.head_bucket, Bucket=self._bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            return status < 500
        except (BotoCoreError, BulkheadTimeout):
            return False
        return True

    def close(self) -> None:
        self._thread.shutdown()
