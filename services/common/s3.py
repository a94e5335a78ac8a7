"""S3 clients (boto3). Calls block, so services run them through asyncio.to_thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.common.config import S3Settings

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client


def make_client(settings: S3Settings, *, public: bool = False, max_pool: int = 32) -> S3Client:
    endpoint = settings.public_endpoint_url if public else settings.endpoint_url
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=settings.region,
        config=Config(
            signature_version="s3v4",
            max_pool_connections=max_pool,
            retries={"max_attempts": 5, "mode": "adaptive"},
            connect_timeout=5,
            read_timeout=60,
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
