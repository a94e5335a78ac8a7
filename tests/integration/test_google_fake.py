"""The Gemini fake itself: the wire forms the generator cannot reach through google-genai 3.x
(the Developer API's Veo operation and Files download), its control API, and running it as a
subprocess the way pipeline tests and benchmarks do."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import httpx2
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from media.v1 import job_pb2
from services.media_worker.generators.base import GenerationError
from services.media_worker.generators.google_client import ClientFactory
from services.media_worker.generators.google_download import VideoDownloader
from services.media_worker.generators.google_settings import GoogleSettings
from tests.fakes.gemini_fake import FakeGemini

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


def developer_client(fake: FakeGemini) -> genai.Client:
    options = types.HttpOptions(base_url=fake.url, api_version="v1beta")
    return genai.Client(vertexai=False, api_key=fake.api_key, http_options=options)


async def start_developer_operation(fake: FakeGemini, samples: int = 1) -> str:
    """google-genai 3.x refuses generate_videos on the Developer API, so submit directly."""
    body = {
        "instances": [{"prompt": "a kite"}],
        "parameters": {"sampleCount": samples, "durationSeconds": 4, "aspectRatio": "16:9"},
    }
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{fake.url}/v1beta/models/veo-3.1-generate-preview:predictLongRunning",
            json=body,
            headers={"x-goog-api-key": fake.api_key},
        )
    assert response.status_code == 200
    return str(response.json()["name"])


async def test_developer_api_operation_and_file_download_through_the_sdk(fake: FakeGemini):
    fake.operation_polls = 2
    name = await start_developer_operation(fake, samples=2)
    assert name.startswith("models/veo-3.1-generate-preview/operations/")
    client = developer_client(fake)
    try:
        operation = types.GenerateVideosOperation(name=name)
        operation = await client.aio.operations.get(operation)
        assert not operation.done
        operation = await client.aio.operations.get(operation)
        assert operation.done and operation.response is not None
        videos = operation.response.generated_videos or []
        assert len(videos) == 2
        uri = videos[0].video.uri if videos[0].video else ""
        assert uri.startswith(f"{fake.url}/v1beta/files/") and uri.endswith(":download?alt=media")
        file_id = uri.split("/files/")[1].split(":")[0]
        data = await client.aio.files.download(file=f"files/{file_id}")
    finally:
        await client.aio.aclose()
    assert data == fake.served_videos[0]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.name) == (256, 144, "h264")
    polls = fake.calls("poll")
    assert [p.path for p in polls] == [f"/v1beta/{name}"] * 2
    assert all(p.method == "GET" for p in polls)
    (download,) = fake.calls("download")
    assert download.headers["x-goog-api-key"] == fake.api_key
    assert download.query == {"alt": "media"}


async def test_developer_operation_error_and_filtered_shapes(fake: FakeGemini):
    fake.block_prompt("predictLongRunning")
    blocked = await start_developer_operation(fake)
    fake.block_output("predictLongRunning")
    filtered = await start_developer_operation(fake)
    client = developer_client(fake)
    try:
        first = await client.aio.operations.get(types.GenerateVideosOperation(name=blocked))
        second = await client.aio.operations.get(types.GenerateVideosOperation(name=filtered))
    finally:
        await client.aio.aclose()
    assert first.done and first.error and first.error["code"] == 3
    assert second.response is not None and second.response.rai_media_filtered_count == 1
    assert not second.response.generated_videos


async def test_downloader_sends_the_key_only_to_the_api_host(fake: FakeGemini, tmp_path: Path):
    client = developer_client(fake)
    try:
        name = await start_developer_operation(fake)
        done = await client.aio.operations.get(types.GenerateVideosOperation(name=name))
    finally:
        await client.aio.aclose()
    assert done.response and done.response.generated_videos
    video = done.response.generated_videos[0].video
    assert video is not None and video.uri
    settings = GoogleSettings(
        api_key=fake.api_key,
        default_image_model="gemini-2.5-flash-image",
        default_video_model="veo-3.1-generate-preview",
        gemini_base_url=fake.url,
        retry_attempts=2,
        retry_base_delay_seconds=0.001,
        retry_max_delay_seconds=0.01,
    )
    downloader = VideoDownloader(ClientFactory(settings))

    await downloader.save(video, tmp_path / "a.mp4", "veo")
    assert (tmp_path / "a.mp4").read_bytes() == fake.served_videos[0]

    elsewhere = types.Video(uri=video.uri.replace("127.0.0.1", "localhost"))
    with pytest.raises(GenerationError) as caught:
        await downloader.save(elsewhere, tmp_path / "b.mp4", "veo")
    assert caught.value.code == job_pb2.ERROR_CODE_CONFIGURATION  # the fake wants a key
    downloads = fake.calls("download")
    assert [("x-goog-api-key" in d.headers) for d in downloads] == [True, False]


async def test_vertex_calls_need_credentials(fake: FakeGemini):
    async with httpx2.AsyncClient() as http:
        anonymous = await http.post(
            f"{fake.url}/v1beta1/projects/p/locations/l/publishers/google/models/m:predict",
            json={"instances": [{"prompt": "x"}]},
        )
        wrong = await http.post(
            f"{fake.url}/v1beta1/projects/p/locations/l/publishers/google/models/m:predict",
            json={"instances": [{"prompt": "x"}]},
            headers={"authorization": "Bearer nope"},
        )
    assert anonymous.status_code == 403 and wrong.status_code == 401
    assert wrong.json()["error"]["status"] == "UNAUTHENTICATED"


async def test_subprocess_with_control_api():
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.fakes.gemini_fake", "--port", "0", "--delay", "0.01"],
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with httpx2.AsyncClient(base_url=url) as http:
            script = {"method": "generateContent", "action": "error", "status": 429, "times": 1}
            assert (await http.post("/_fake/script", json=script)).status_code == 200
            options = types.HttpOptions(base_url=url, api_version="v1beta")
            client = genai.Client(api_key="fake-gemini-api-key", http_options=options)
            config = types.GenerateContentConfig(response_modalities=["IMAGE"])
            try:
                with pytest.raises(genai_errors.ClientError) as caught:
                    await client.aio.models.generate_content(
                        model="gemini-2.5-flash-image", contents="x", config=config
                    )
                assert caught.value.code == 429
                response = await client.aio.models.generate_content(
                    model="gemini-2.5-flash-image", contents="x", config=config
                )
            finally:
                await client.aio.aclose()
            parts = response.candidates[0].content.parts if response.candidates else None
            assert parts and parts[0].inline_data and parts[0].inline_data.data
            assert parts[0].inline_data.data.startswith(b"\x89PNG")
            listing = json.loads((await http.get("/_fake/requests")).text)
            assert [entry["status"] for entry in listing] == [429, 200]
            assert (await http.post("/_fake/reset")).status_code == 200
            assert json.loads((await http.get("/_fake/requests")).text) == []
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0
