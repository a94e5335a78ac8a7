"""Decompression bombs: a small file that decodes to far more pixels than any model takes is
refused from its header, by job_service at CreateJob and again by the worker before it decodes
(for an object that reached storage some other way)."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from media.v1 import job_pb2
from services.common.errors import field_violations
from services.common.images import MAX_INPUT_PIXELS
from tests.conftest import workers_paused
from tests.e2e.helpers import create, wait_terminal

pytestmark = pytest.mark.e2e


def bomb(side: int = 7071) -> bytes:
    """A PNG just under 50 megapixels, the old limit, that compresses to tens of kilobytes (the
    attack as found: 162 KB decoding to 50 MP)."""
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


async def test_create_job_refuses_an_input_that_decodes_to_too_many_pixels(clients) -> None:
    data = bomb()
    assert len(data) < 200_000 and 7071 * 7071 > MAX_INPUT_PIXELS
    for params in (
        {"image": job_pb2.ImageParams(prompt="bomb", input_image=job_pb2.InputImage(data=data))},
        {"video": job_pb2.VideoParams(prompt="bomb", input_image=job_pb2.InputImage(data=data))},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(clients, clients.alice, **params)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, description)] = field_violations(caught.value)
        kind = next(iter(params))
        assert field == f"{kind}.input_image.data"
        assert "7071x7071" in description and str(MAX_INPUT_PIXELS) in description


async def test_the_worker_refuses_a_stored_bomb_before_decoding_it(clients, stack, deps) -> None:
    s3 = deps.s3_client()
    with workers_paused(stack):
        job = await create(
            clients,
            clients.alice,
            image=job_pb2.ImageParams(
                prompt="edit", size="256x256", input_image=job_pb2.InputImage(data=small_png())
            ),
        )
        stored = job.image.input_image
        # The object behind the key is replaced before any worker looks at it.
        await asyncio.to_thread(
            s3.put_object,
            Bucket=stored.bucket,
            Key=stored.key,
            Body=bomb(),
            ContentType="image/png",
        )
    done = await wait_terminal(clients, clients.alice, job.id)
    assert done.status == job_pb2.JOB_STATUS_FAILED
    assert done.error.code == job_pb2.ERROR_CODE_INVALID_REQUEST
    assert "7071x7071" in done.error.message
    assert done.attempt == 1  # refused for good, not retried
