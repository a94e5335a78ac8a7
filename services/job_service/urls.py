"""Presigned GET URLs, minted each time a job is read and never stored."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from media.v1 import job_pb2

if TYPE_CHECKING:  # the stubs are a dev dependency
    from types_boto3_s3.client import S3Client


class UrlSigner:
    def __init__(self, public_s3: S3Client, ttl_seconds: int) -> None:
        self._s3 = public_s3  # a client whose endpoint is the one clients can reach
        self._ttl = ttl_seconds

    def sign(self, job: job_pb2.Job) -> job_pb2.Job:
        if not job.outputs:
            return job
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._ttl)
        for output in job.outputs:
            # Signing is local computation: no request leaves the process.
            output.url = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": output.bucket, "Key": output.key},
                ExpiresIn=self._ttl,
            )
            output.url_expire_time.FromDatetime(expires)
        return job
