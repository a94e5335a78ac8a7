"""Sending an input image the way any client can: CreateInputUpload, then a plain HTTP PUT of the
file to the presigned URL it returns (the image never travels in a gRPC message)."""

from __future__ import annotations

import urllib.error
import urllib.request

from services.mediactl.build import InputFile
from services.mediactl.client import JobService


class UploadError(Exception):
    """The PUT of the input image failed (shown without a traceback)."""


def send_input_image(jobs: JobService, image: InputFile, timeout: float) -> str:
    """Uploads the image; returns the upload_id for CreateJob's input_image."""
    upload = jobs.create_input_upload(image.mime_type, len(image.data))
    # The headers are signed into the URL: sent as given, or storage refuses the PUT.
    request = urllib.request.Request(
        upload.url, data=image.data, method="PUT", headers=dict(upload.headers)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise UploadError(
            f"object storage refused the input image: HTTP {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UploadError(f"could not upload the input image: {reason}") from None
    return upload.upload_id
