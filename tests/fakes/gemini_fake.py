"""A local fake of Google's generative media APIs that speaks their real REST wire format.

Tests point the real google-genai SDK at it (``http_options.base_url`` or the SDK's own
``GOOGLE_GEMINI_BASE_URL`` / ``GOOGLE_VERTEX_BASE_URL``), so request building, response parsing and
error handling are the SDK's own. Served endpoints (any API version prefix: v1, v1beta, v1beta1):

Gemini Developer API (auth: ``x-goog-api-key`` header)
  POST /{v}/models/{model}:generateContent
  POST /{v}/models/{model}:predict                  (Imagen)
  POST /{v}/models/{model}:predictLongRunning       (Veo) -> {"name": "models/{m}/operations/{id}"}
  GET  /{v}/models/{model}/operations/{id}          (operation poll)
  GET  /{v}/files/{id}:download?alt=media           (generated video download)
Vertex AI (auth: ``Authorization: Bearer`` for project/location, ``x-goog-api-key`` in express mode)
  POST /{v}/[projects/{p}/locations/{l}/]publishers/google/models/{model}:generateContent
  POST /{v}/[projects/{p}/locations/{l}/]publishers/google/models/{model}:predict
  POST /{v}/[projects/{p}/locations/{l}/]publishers/google/models/{model}:predictLongRunning
  POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{model}:fetchPredictOperation
Cloud Storage JSON API, for Veo outputs written to ``storageUri`` (auth: Bearer)
  GET  /download/storage/v1/b/{bucket}/o/{object}?alt=media  (and /storage/v1/b/...)
Control (for a fake started as a subprocess)
  POST /_fake/reset, POST /_fake/script, POST /_fake/config, GET /_fake/requests

Images are real PNG/JPEG files (Pillow) at the resolution the model would render; videos are real
small H.264 MP4 files (PyAV) of the requested aspect ratio and duration.

Scripting, per method name ("generateContent", "predict", "predictLongRunning", "poll",
"download"): ``fail(method, status, times)``, ``block_prompt``, ``block_output``, ``malformed``,
plus ``delay_seconds`` (every API call), ``operation_polls`` (the poll that first says done) and
``never_finish``. Run standalone: ``python -m tests.fakes.gemini_fake --port 8089 --delay 0.05``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import itertools
import json
import os
import re
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import av
from PIL import Image, ImageDraw

METHODS = ("generateContent", "predict", "predictLongRunning", "poll", "download")
DEFAULT_API_KEY = "fake-gemini-api-key"
DEFAULT_ACCESS_TOKEN = "fake-access-token"
EXPRESS_PROJECT = "fake-express-project"
EXPRESS_LOCATION = "us-central1"

# What each model family renders for an aspect ratio (1K); 2K/4K scale these up.
GEMINI_25_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
GEMINI_3_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
IMAGEN_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}
SIZE_SCALE = {"1K": 1, "2K": 2, "4K": 4}
# Tiny but real videos keep tests fast; the aspect ratio and duration are what callers probe.
VIDEO_SIZES = {"16:9": (256, 144), "9:16": (144, 256)}
VIDEO_FPS = 8

PROMPT_BLOCK_MESSAGE = (
    "The prompt could not be submitted. This prompt contains sensitive words that violate "
    "Google's Responsible AI practices. Try rephrasing the prompt. Support codes: 42876398"
)
VIDEO_PROMPT_BLOCK_MESSAGE = (
    "The prompt could not be submitted. This prompt contains words that violate Vertex AI's "
    "usage guidelines. Try rephrasing the prompt."
)
OUTPUT_BLOCK_REASON = (
    "Your current safety filter threshold filtered out the generated image. Support codes: 58061214"
)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report the problem.",
    503: "The model is overloaded. Please try again later.",
}

_VERSION = r"/(?:v1|v1beta|v1beta1|v1alpha|v1alpha1)"
_VERTEX_PARENT = r"(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    (
        "vertex",
        "model_call",
        re.compile(
            _VERSION + "/" + _VERTEX_PARENT + r"publishers/google/models/(?P<model>[^/:]+)"
            r":(?P<verb>generateContent|predict|predictLongRunning|fetchPredictOperation)$"
        ),
    ),
    (
        "developer",
        "model_call",
        re.compile(
            _VERSION + r"/models/(?P<model>[^/:]+)"
            r":(?P<verb>generateContent|predict|predictLongRunning)$"
        ),
    ),
    (
        "developer",
        "operation",
        re.compile(_VERSION + r"/(?P<name>(?:models/[^/]+/)?operations/[^/]+)$"),
    ),
    ("developer", "file", re.compile(_VERSION + r"/files/(?P<file>[a-z0-9]+):download$")),
    (
        "gcs",
        "object",
        re.compile(r"(?:/download)?/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>.+)$"),
    ),
]


@dataclass
class RecordedRequest:
    """One request as the fake received it (headers lower-cased)."""

    method: str  # HTTP method
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON body, or None
    backend: str  # developer | vertex | gcs | control | unknown
    call: str  # generateContent | predict | predictLongRunning | poll | download | ...
    model: str = ""
    inline_images: list[bytes] = field(default_factory=list)  # decoded input images
    status: int = 0  # what the fake answered


@dataclass
class _Action:
    kind: str  # error | block_prompt | block_output | malformed
    remaining: int | None  # None: every call until reset
    status: int = 0
    message: str = ""
    reason: str = ""
    retry_delay: str = "0.01s"


@dataclass
class _Operation:
    name: str
    backend: str
    model: str
    samples: int
    duration: int
    aspect_ratio: str
    storage_uri: str
    outcome: str  # success | block_prompt | block_output | no_media
    polls: int = 0


class _Reply(Exception):
    """Raised inside a handler to answer at once with a status and a body."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json"):
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def error_body(status: int, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """Google's JSON error envelope (google.rpc.Status over HTTP)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def decode_b64(data: str) -> bytes:
    """Decodes standard or URL-safe base64 (the SDK sends URL-safe for inline data)."""
    data = data.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_image(width: int, height: int, mime_type: str, seed: int) -> bytes:
    """A real image of the given size: a colour field with a marker, distinct per seed."""
    colour = ((seed * 67) % 256, (seed * 131 + 80) % 256, (seed * 29 + 160) % 256)
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 8, width // 3, height // 3), fill=(255, 255, 255))
    draw.text((width // 8 + 4, height // 8 + 4), f"fake {seed}", fill=(0, 0, 0))
    out = io.BytesIO()
    if mime_type == "image/jpeg":
        image.save(out, format="JPEG", quality=90)
    elif mime_type == "image/webp":
        image.save(out, format="WEBP", quality=90)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


_video_cache: dict[tuple[int, int, int], bytes] = {}
_video_lock = threading.Lock()


def make_mp4(width: int, height: int, seconds: int) -> bytes:
    """A real H.264 MP4 (PyAV) with the given frame size and duration; cached per shape."""
    key = (width, height, seconds)
    with _video_lock:
        cached = _video_cache.get(key)
        if cached is not None:
            return cached
        out = io.BytesIO()
        with av.open(out, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=VIDEO_FPS)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            for index in range(seconds * VIDEO_FPS):
                frame_image = Image.new("RGB", (width, height), ((index * 8) % 256, 90, 160))
                frame = av.VideoFrame.from_image(frame_image)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        data = out.getvalue()
        _video_cache[key] = data
        return data


def gemini_image_size(model: str, aspect_ratio: str, image_size: str) -> tuple[int, int]:
    table = GEMINI_3_SIZES if "gemini-3" in model else GEMINI_25_SIZES
    width, height = table[aspect_ratio]
    scale = SIZE_SCALE[image_size]
    return width * scale, height * scale


def video_durations(model: str) -> tuple[int, ...]:
    return (5, 6, 7, 8) if model.startswith("veo-2") else (4, 6, 8)


class FakeGemini:
    """The fake server; start() runs it in a daemon thread on 127.0.0.1:<port>."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        delay_seconds: float = 0.0,
        operation_polls: int = 1,
    ) -> None:
        self.api_key = api_key
        self.access_token = access_token  # "" accepts any bearer token
        self.delay_seconds = delay_seconds
        self.operation_polls = operation_polls  # the poll that first answers "done"
        self._default_operation_polls = operation_polls
        self.never_finish = False
        self.requests: list[RecordedRequest] = []
        self.served_images: list[bytes] = []
        self.served_videos: list[bytes] = []
        self._lock = threading.Lock()
        self._actions: dict[str, list[_Action]] = {method: [] for method in METHODS}
        self._operations: dict[str, _Operation] = {}
        self._files: dict[str, bytes] = {}  # Developer API file id -> bytes
        self._objects: dict[tuple[str, str], bytes] = {}  # GCS (bucket, object) -> bytes
        self._ids = itertools.count(1)
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGemini:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that stop() returns quickly
            name="gemini-fake",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets scripted behaviour and recorded requests; keeps the server running."""
        with self._lock:
            for queue in self._actions.values():
                queue.clear()
            self.requests.clear()
            self.served_images.clear()
            self.served_videos.clear()
            self.never_finish = False
            self.operation_polls = self._default_operation_polls

    def fail(
        self,
        method: str,
        status: int,
        times: int | None = 1,
        message: str = "",
        retry_delay: str = "0.01s",
    ) -> None:
        """The next `times` calls of `method` answer HTTP `status` (None: until reset)."""
        self._push(
            method,
            _Action(
                "error",
                times,
                status=status,
                message=message or DEFAULT_MESSAGES.get(status, "Error."),
                retry_delay=retry_delay,
            ),
        )

    def block_prompt(
        self, method: str = "generateContent", reason: str = "SAFETY", times: int | None = 1
    ) -> None:
        """The prompt is rejected by safety filters (shape depends on the method)."""
        self._push(method, _Action("block_prompt", times, reason=reason))

    def block_output(
        self, method: str = "generateContent", reason: str = "IMAGE_SAFETY", times: int | None = 1
    ) -> None:
        """The generated media is filtered out (finishReason / raiFilteredReason / RAI count)."""
        self._push(method, _Action("block_output", times, reason=reason))

    def malformed(
        self, method: str = "generateContent", kind: str = "not_json", times: int | None = 1
    ) -> None:
        """kind: not_json (a 200 with an HTML body), no_media (valid JSON without media) or
        bad_image (inline data that is not an image)."""
        self._push(method, _Action("malformed", times, reason=kind))

    def calls(self, call: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.call == call]

    def _push(self, method: str, action: _Action) -> None:
        if method not in self._actions:
            raise ValueError(f"unknown method {method!r}; one of {METHODS}")
        with self._lock:
            self._actions[method].append(action)

    def _take(self, method: str) -> _Action | None:
        with self._lock:
            queue = self._actions[method]
            if not queue:
                return None
            action = queue[0]
            if action.remaining is not None:
                action.remaining -= 1
                if action.remaining <= 0:
                    queue.pop(0)
            return action

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    # -- HTTP --------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoints

            def do_GET(self) -> None:
                fake._dispatch(self)

            def do_POST(self) -> None:
                fake._dispatch(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in handler.headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=handler.command,
            path=parsed.path,
            query=query,
            headers=headers,
            body=body,
            backend="unknown",
            call="",
        )
        status, payload, content_type = 500, b"", "application/json"
        try:
            self._route(record)
            raise _Reply(404, error_body(404, f"No route for {parsed.path}"))
        except _Reply as reply:
            status, payload, content_type = reply.status, reply.body, reply.content_type
        except Exception as exc:  # a bug in the fake: answer 500 with the reason
            status, payload = 500, error_body(500, f"fake error: {exc!r}")
        record.status = status
        if record.backend != "control":
            with self._lock:
                self.requests.append(record)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up (e.g. its timeout fired)

    def _route(self, record: RecordedRequest) -> None:
        if record.path.startswith("/_fake/"):
            record.backend = "control"
            self._control(record)
        for backend, kind, pattern in _ROUTES:
            match = pattern.match(record.path)
            if match is None:
                continue
            record.backend = backend
            groups = match.groupdict()
            if kind == "model_call" and record.method == "POST":
                verb = groups["verb"]
                record.call = "poll" if verb == "fetchPredictOperation" else verb
                record.model = groups["model"]
                self._authorize(record)
                self._delay()
                self._model_call(record, verb)
            if kind == "operation" and record.method == "GET":
                record.call = "poll"
                self._authorize(record)
                self._delay()
                self._poll(record, groups["name"])
            if kind == "file" and record.method == "GET":
                record.call = "download"
                self._authorize(record)
                self._download(record, self._files.get(groups["file"]))
            if kind == "object" and record.method == "GET":
                record.call = "download"
                self._authorize(record)
                key = (groups["bucket"], urllib.parse.unquote(groups["object"]))
                self._download(record, self._objects.get(key))

    def _authorize(self, record: RecordedRequest) -> None:
        api_key = record.headers.get("x-goog-api-key", "")
        bearer = record.headers.get("authorization", "")
        if (record.backend == "vertex" and bearer) or record.backend == "gcs":
            token = bearer.removeprefix("Bearer ").strip()
            if not token or (self.access_token and token != self.access_token):
                message = "Request had invalid authentication credentials."
                raise _Reply(401, error_body(401, message))
            return
        if not api_key:
            message = "Method doesn't allow unregistered callers. Please use an API key."
            raise _Reply(403, error_body(403, message))
        if self.api_key and api_key != self.api_key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            message = "API key not valid. Please pass a valid API key."
            raise _Reply(400, error_body(400, message, details))

    def _delay(self) -> None:
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)

    def _scripted_failure(self, action: _Action | None) -> None:
        if action is None:
            return
        if action.kind == "error":
            details = None
            if action.status == 429:
                details = [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": action.retry_delay,
                    }
                ]
            raise _Reply(action.status, error_body(action.status, action.message, details))
        if action.kind == "malformed" and action.reason == "not_json":
            raise _Reply(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")

    # -- model calls -------------------------------------------------------------------------

    def _model_call(self, record: RecordedRequest, verb: str) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        if verb == "fetchPredictOperation":
            self._poll(record, str(body.get("operationName", "")))
        action = self._take(record.call)
        self._scripted_failure(action)
        if verb == "generateContent":
            self._generate_content(record, body, action)
        if verb == "predict":
            self._predict(record, body, action)
        if verb == "predictLongRunning":
            self._predict_long_running(record, body, action)

    def _generate_content(
        self, record: RecordedRequest, body: dict[str, Any], action: _Action | None
    ) -> None:
        for content in body.get("contents") or []:
            for part in content.get("parts") or []:
                inline = part.get("inlineData") or part.get("inline_data")
                if inline and inline.get("data"):
                    try:
                        record.inline_images.append(decode_b64(inline["data"]))
                    except (binascii.Error, ValueError):
                        raise _Reply(400, error_body(400, "Invalid inline data.")) from None
        config = body.get("generationConfig") or {}
        image_config = config.get("imageConfig") or {}
        aspect_ratio = image_config.get("aspectRatio", "1:1")
        image_size = image_config.get("imageSize", "")
        modalities = [m.upper() for m in config.get("responseModalities") or ["TEXT"]]
        model = record.model
        if aspect_ratio not in GEMINI_25_SIZES:
            raise _Reply(400, error_body(400, f"Unsupported aspect ratio: {aspect_ratio}"))
        if image_size and ("gemini-3" not in model or image_size not in SIZE_SCALE):
            message = f"imageSize {image_size} is not supported by {model}"
            raise _Reply(400, error_body(400, message))
        response: dict[str, Any] = {
            "modelVersion": model,
            "responseId": f"fake-{self._next_id()}",
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 1298},
        }
        if record.backend == "vertex":
            response["createTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if action is not None and action.kind == "block_prompt":
            response["promptFeedback"] = {
                "blockReason": action.reason,
                "blockReasonMessage": "The prompt was blocked by the fake's safety filter.",
            }
            raise _Reply(200, json.dumps(response).encode())
        if action is not None and action.kind == "block_output":
            response["candidates"] = [
                {
                    "content": {"role": "model"},
                    "finishReason": action.reason,
                    "finishMessage": "The generated image was filtered by the fake.",
                    "index": 0,
                }
            ]
            raise _Reply(200, json.dumps(response).encode())
        parts: list[dict[str, Any]] = []
        if action is not None and action.kind == "malformed" and action.reason == "bad_image":
            parts.append({"inlineData": {"mimeType": "image/png", "data": encode_b64(b"not png")}})
        elif action is not None and action.kind == "malformed":  # no_media
            parts.append({"text": "I can only describe the picture in words."})
        elif "IMAGE" in modalities:
            width, height = gemini_image_size(model, aspect_ratio, image_size or "1K")
            data = make_image(width, height, "image/png", self._next_id())
            with self._lock:
                self.served_images.append(data)
            parts.append({"inlineData": {"mimeType": "image/png", "data": encode_b64(data)}})
        else:
            parts.append({"text": "A text-only answer."})
        response["candidates"] = [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ]
        raise _Reply(200, json.dumps(response).encode())

    def _predict(
        self, record: RecordedRequest, body: dict[str, Any], action: _Action | None
    ) -> None:
        instances = body.get("instances") or [{}]
        params = body.get("parameters") or {}
        if not instances[0].get("prompt"):
            raise _Reply(400, error_body(400, "The prompt is required."))
        count = int(params.get("sampleCount", 4))
        aspect_ratio = params.get("aspectRatio", "1:1")
        image_size = params.get("sampleImageSize", "1K")
        mime_type = (params.get("outputOptions") or {}).get("mimeType", "image/png")
        if aspect_ratio not in IMAGEN_SIZES:
            raise _Reply(400, error_body(400, f"Unsupported aspect ratio: {aspect_ratio}"))
        if not 1 <= count <= 4 or image_size not in ("1K", "2K"):
            raise _Reply(400, error_body(400, "Invalid sampleCount or sampleImageSize."))
        if mime_type not in ("image/png", "image/jpeg"):
            raise _Reply(400, error_body(400, f"Unsupported mimeType: {mime_type}"))
        if action is not None and action.kind == "block_prompt":
            message = f"Image generation failed with the following error: {PROMPT_BLOCK_MESSAGE}"
            raise _Reply(400, error_body(400, message))
        predictions: list[dict[str, Any]] = []
        if action is not None and action.kind == "block_output":
            if params.get("includeRaiReason"):
                predictions = [{"raiFilteredReason": OUTPUT_BLOCK_REASON} for _ in range(count)]
        elif action is not None and action.kind == "malformed":
            if action.reason == "bad_image":
                predictions = [{"mimeType": mime_type, "bytesBase64Encoded": encode_b64(b"junk")}]
        else:
            width, height = IMAGEN_SIZES[aspect_ratio]
            scale = SIZE_SCALE[image_size]
            for _ in range(count):
                data = make_image(width * scale, height * scale, mime_type, self._next_id())
                with self._lock:
                    self.served_images.append(data)
                predictions.append({"mimeType": mime_type, "bytesBase64Encoded": encode_b64(data)})
        # Imagen answers {} when every image was filtered and no RAI reason was asked for.
        raise _Reply(200, json.dumps({"predictions": predictions} if predictions else {}).encode())

    def _predict_long_running(
        self, record: RecordedRequest, body: dict[str, Any], action: _Action | None
    ) -> None:
        instances = body.get("instances") or [{}]
        params = body.get("parameters") or {}
        instance = instances[0]
        image = instance.get("image")
        if image and image.get("bytesBase64Encoded"):
            record.inline_images.append(decode_b64(image["bytesBase64Encoded"]))
        if not instance.get("prompt") and not image:
            raise _Reply(400, error_body(400, "A prompt or an image is required."))
        model = record.model
        samples = int(params.get("sampleCount", 1))
        duration = int(params.get("durationSeconds", 8))
        aspect_ratio = params.get("aspectRatio", "16:9")
        if duration not in video_durations(model):
            message = f"Unsupported output video duration {duration} seconds for {model}."
            raise _Reply(400, error_body(400, message))
        if aspect_ratio not in VIDEO_SIZES or not 1 <= samples <= 4:
            raise _Reply(400, error_body(400, "Invalid aspectRatio or sampleCount."))
        person = params.get("personGeneration")
        if person is not None and person not in ("dont_allow", "allow_adult", "allow_all"):
            raise _Reply(400, error_body(400, f"Invalid personGeneration: {person}"))
        outcome = "success"
        if action is not None and action.kind in ("block_prompt", "block_output"):
            outcome = action.kind
        elif action is not None and action.kind == "malformed":
            outcome = "no_media"
        op_id = f"op{self._next_id():06d}"
        if record.backend == "vertex":
            project = (
                record.path.split("/projects/")[1].split("/")[0]
                if "/projects/" in (record.path)
                else EXPRESS_PROJECT
            )
            location = (
                record.path.split("/locations/")[1].split("/")[0]
                if "/locations/" in record.path
                else EXPRESS_LOCATION
            )
            name = (
                f"projects/{project}/locations/{location}/publishers/google/models/{model}"
                f"/operations/{op_id}"
            )
        else:
            name = f"models/{model}/operations/{op_id}"
        operation = _Operation(
            name=name,
            backend=record.backend,
            model=model,
            samples=samples,
            duration=duration,
            aspect_ratio=aspect_ratio,
            storage_uri=str(params.get("storageUri", "")),
            outcome=outcome,
        )
        with self._lock:
            self._operations[name] = operation
        raise _Reply(200, json.dumps({"name": name}).encode())

    def _poll(self, record: RecordedRequest, name: str) -> None:
        record.call = "poll"
        action = self._take("poll")
        self._scripted_failure(action)
        with self._lock:
            operation = self._operations.get(name)
            if operation is not None:
                operation.polls += 1
        if operation is None:
            raise _Reply(404, error_body(404, f"Operation {name} not found."))
        record.model = operation.model
        result: dict[str, Any] = {"name": name}
        if self.never_finish or operation.polls < self.operation_polls:
            result["done"] = False
            result["metadata"] = {"progressPercent": 10}
            raise _Reply(200, json.dumps(result).encode())
        result["done"] = True
        if operation.outcome == "block_prompt":
            result["error"] = {"code": 3, "message": VIDEO_PROMPT_BLOCK_MESSAGE}
            raise _Reply(200, json.dumps(result).encode())
        result["response"] = self._video_response(operation)
        raise _Reply(200, json.dumps(result).encode())

    def _video_response(self, operation: _Operation) -> dict[str, Any]:
        if operation.outcome == "no_media":
            return {}
        if operation.outcome == "block_output":
            reasons = ["Veo could not generate videos because the input image violates policies."]
            if operation.backend == "developer":
                return {
                    "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                    "PredictLongRunningResponse",
                    "generateVideoResponse": {
                        "raiMediaFilteredCount": operation.samples,
                        "raiMediaFilteredReasons": reasons,
                    },
                }
            return {
                "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                "raiMediaFilteredCount": operation.samples,
                "raiMediaFilteredReasons": reasons,
            }
        width, height = VIDEO_SIZES[operation.aspect_ratio]
        data = make_mp4(width, height, operation.duration)
        op_id = operation.name.rsplit("/", 1)[-1]
        if operation.backend == "developer":
            samples = []
            for index in range(operation.samples):
                file_id = f"{op_id}v{index}"
                with self._lock:
                    self._files[file_id] = data
                    self.served_videos.append(data)
                uri = f"{self.url}/v1beta/files/{file_id}:download?alt=media"
                samples.append({"video": {"uri": uri}})
            return {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": samples},
            }
        videos = []
        for index in range(operation.samples):
            with self._lock:
                self.served_videos.append(data)
            if operation.storage_uri:
                bucket, _, prefix = operation.storage_uri.removeprefix("gs://").partition("/")
                obj = f"{prefix.rstrip('/')}/{op_id}/sample_{index}.mp4".lstrip("/")
                with self._lock:
                    self._objects[(bucket, obj)] = data
                videos.append({"gcsUri": f"gs://{bucket}/{obj}", "mimeType": "video/mp4"})
            else:
                videos.append({"bytesBase64Encoded": encode_b64(data), "mimeType": "video/mp4"})
        return {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            "raiMediaFilteredCount": 0,
            "videos": videos,
        }

    def _download(self, record: RecordedRequest, data: bytes | None) -> None:
        if record.query.get("alt") != "media":
            raise _Reply(400, error_body(400, "Only alt=media downloads are supported."))
        self._scripted_failure(self._take("download"))
        if data is None:
            raise _Reply(404, error_body(404, "File not found."))
        raise _Reply(200, data, "video/mp4")

    # -- control -----------------------------------------------------------------------------

    def _control(self, record: RecordedRequest) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        if record.path == "/_fake/reset" and record.method == "POST":
            self.reset()
        elif record.path == "/_fake/config" and record.method == "POST":
            if "delay_seconds" in body:
                self.delay_seconds = float(body["delay_seconds"])
            if "operation_polls" in body:
                self.operation_polls = int(body["operation_polls"])
            if "never_finish" in body:
                self.never_finish = bool(body["never_finish"])
        elif record.path == "/_fake/script" and record.method == "POST":
            method, action = str(body.get("method", "")), str(body.get("action", ""))
            times = body.get("times", 1)
            if action == "error":
                self.fail(method, int(body["status"]), times, str(body.get("message", "")))
            elif action == "block_prompt":
                self.block_prompt(method, str(body.get("reason", "SAFETY")), times)
            elif action == "block_output":
                self.block_output(method, str(body.get("reason", "IMAGE_SAFETY")), times)
            elif action == "malformed":
                self.malformed(method, str(body.get("kind", "not_json")), times)
            else:
                raise _Reply(400, error_body(400, f"unknown action {action!r}"))
        elif record.path == "/_fake/requests" and record.method == "GET":
            with self._lock:
                listing = [
                    {**asdict(request), "inline_images": len(request.inline_images)}
                    for request in self.requests
                ]
            raise _Reply(200, json.dumps(listing).encode())
        else:
            raise _Reply(404, error_body(404, f"No control route {record.path}"))
        raise _Reply(200, b"{}")


@contextmanager
def running_fake(**kwargs: Any) -> Iterator[FakeGemini]:
    """`with running_fake() as fake:` -- a started fake, stopped on exit."""
    fake = FakeGemini(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--delay",
        type=float,
        default=float(os.environ.get("GEMINI_FAKE_DELAY_SECONDS", "0") or 0),
        help="seconds every API call waits (env GEMINI_FAKE_DELAY_SECONDS)",
    )
    parser.add_argument("--api-key", default=os.environ.get("GEMINI_FAKE_API_KEY", DEFAULT_API_KEY))
    parser.add_argument(
        "--access-token",
        default=os.environ.get("GEMINI_FAKE_ACCESS_TOKEN", ""),
        help="bearer token Vertex calls must carry; empty accepts any",
    )
    parser.add_argument("--operation-polls", type=int, default=1)
    args = parser.parse_args(argv)
    fake = FakeGemini(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        access_token=args.access_token,
        delay_seconds=args.delay,
        operation_polls=args.operation_polls,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fake.start()
    print(f"gemini fake listening on http://{args.host}:{fake.port}", flush=True)
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
