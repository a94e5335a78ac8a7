"""`mediactl download` and `watch -o`: outputs fetched from a local HTTP server standing in for
S3's presigned URLs, streamed to disk and checked against the sha256 of the job's output record."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.mediactl import download, exit_codes
from services.mediactl.main import main

TOKEN = "test-token"
JOB_ID = "01935f3e-7a00-7000-8000-0000000000dd"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"frames" * 5000


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404, "no such key")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


@pytest.fixture(autouse=True)
def files() -> Iterator[dict[str, bytes]]:
    _Files.files = {}
    _Files.requests = []
    yield _Files.files


def _output(index: int, data: bytes, content_type: str, ext: str, url: str) -> job_pb2.Output:
    return job_pb2.Output(
        index=index,
        bucket="media",
        key=f"jobs/{JOB_ID}/1/output-{index}.{ext}",
        content_type=content_type,
        byte_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        url=url,
    )


def _succeeded(*outputs: job_pb2.Output) -> job_pb2.Job:
    return job_pb2.Job(
        id=JOB_ID,
        kind=job_pb2.MEDIA_KIND_IMAGE,
        status=job_pb2.JOB_STATUS_SUCCEEDED,
        progress=100,
        version=4,
        outputs=outputs,
    )


def _served(files: dict[str, bytes], base: str, index: int, data: bytes, **kw: Any) -> Any:
    path = f"/media/jobs/{JOB_ID}/1/output-{index}"
    files[path] = data
    return _output(index, data, url=f"{base}{path}?X-Amz-Signature=abc", **kw)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the module --------------------------------------------------------------------------------


def test_saves_each_output_under_its_name_and_checks_it(
    http_base: str, files: dict[str, bytes], tmp_path: Path
) -> None:
    job = _succeeded(
        _served(files, http_base, 0, PNG, content_type="image/png", ext="png"),
        _served(files, http_base, 1, MP4, content_type="video/mp4", ext="mp4"),
    )
    out = tmp_path / "new" / "dir"  # made as needed
    saved = download.save_outputs(
        job, out, timeout=5, on_saved=lambda s: None, on_failed=pytest.fail
    )
    assert [(s.index, s.path.name, s.byte_size) for s in saved] == [
        (0, f"{JOB_ID}-0.png", len(PNG)),
        (1, f"{JOB_ID}-1.mp4", len(MP4)),
    ]
    assert (out / f"{JOB_ID}-0.png").read_bytes() == PNG
    assert (out / f"{JOB_ID}-1.mp4").read_bytes() == MP4
    assert _leftovers(out) == [f"{JOB_ID}-0.png", f"{JOB_ID}-1.mp4"]  # no partial file
    assert download.saved_files(out, JOB_ID) == [s.path for s in saved]


def test_a_sha256_mismatch_removes_the_file_and_keeps_the_good_ones(
    http_base: str, files: dict[str, bytes], tmp_path: Path
) -> None:
    good = _served(files, http_base, 0, PNG, content_type="image/png", ext="png")
    bad = _served(files, http_base, 1, PNG, content_type="image/png", ext="png")
    bad.sha256 = hashlib.sha256(b"what the worker stored").hexdigest()
    failures: list[download.DownloadError] = []
    saved = download.save_outputs(
        _succeeded(good, bad),
        tmp_path,
        timeout=5,
        on_saved=lambda s: None,
        on_failed=failures.append,
    )
    assert [s.index for s in saved] == [0]
    (failure,) = failures
    assert str(failure).startswith("output #1: sha256 mismatch: got ")
    assert "file removed" in str(failure)
    assert _leftovers(tmp_path) == [f"{JOB_ID}-0.png"]


def test_a_size_mismatch_and_a_missing_object_leave_nothing(
    http_base: str, files: dict[str, bytes], tmp_path: Path
) -> None:
    short = _served(files, http_base, 0, PNG, content_type="image/png", ext="png")
    short.byte_size += 1
    gone = _output(1, PNG, "image/png", "png", f"{http_base}/media/nothing-here")
    with pytest.raises(download.DownloadError, match=r"output #0: got \d+ bytes, the job records"):
        download.save_output(JOB_ID, short, tmp_path, timeout=5)
    with pytest.raises(download.DownloadError, match="output #1: HTTP 404"):
        download.save_output(JOB_ID, gone, tmp_path, timeout=5)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "no download URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("http://127.0.0.1:1/x", "output #0: "),  # nothing listens there
    ],
)
def test_unusable_urls_are_errors(tmp_path: Path, url: str, message: str) -> None:
    output = _output(0, PNG, "image/png", "png", url)
    with pytest.raises(download.DownloadError, match=re.escape(message)):
        download.save_output(JOB_ID, output, tmp_path, timeout=5)
    assert _leftovers(tmp_path) == []


@dataclass
class _Body(io.RawIOBase):
    """A response that records how much each read asked for."""

    data: bytes
    asked: list[int] = field(default_factory=list)
    offset: int = 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        self.asked.append(size)
        if size is None or size < 0:
            size = len(self.data) - self.offset
        chunk = self.data[self.offset : self.offset + size]
        self.offset += len(chunk)
        return chunk


def test_the_body_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * download.CHUNK_BYTES // 256 + 7)
    body = _Body(data)
    output = _output(0, data, "video/mp4", "mp4", "https://s3.example/x")
    saved = download.save_output(
        JOB_ID,
        output,
        tmp_path,
        timeout=5,
        opener=lambda url, timeout: body,  # type: ignore[arg-type,return-value]
    )
    assert saved.path.read_bytes() == data
    assert body.asked == [download.CHUNK_BYTES] * 5  # never "everything at once"


def test_file_names() -> None:
    png = job_pb2.Output(index=2, content_type="image/png", key=f"jobs/{JOB_ID}/1/output-2.png")
    odd = job_pb2.Output(index=0, content_type="application/x-odd", key="jobs/x/1/output-0.odd")
    bare = job_pb2.Output(index=1, content_type="")
    assert download.file_name(JOB_ID, png) == f"{JOB_ID}-2.png"
    assert download.file_name(JOB_ID, odd) == f"{JOB_ID}-0.odd"
    assert download.file_name(JOB_ID, bare) == f"{JOB_ID}-1.bin"
    with pytest.raises(download.DownloadError):
        download.file_name("../../etc/x", png)


def test_only_a_succeeded_job_is_downloadable() -> None:
    running = job_pb2.Job(id=JOB_ID, status=job_pb2.JOB_STATUS_RUNNING)
    assert download.refusal(running) == (
        f"job {JOB_ID} is RUNNING, not SUCCEEDED: only a succeeded job has outputs to download"
    )
    assert download.refusal(_succeeded()) == f"job {JOB_ID} has no outputs"
    assert download.refusal(_succeeded(job_pb2.Output(index=0))) is None


# --- the commands ------------------------------------------------------------------------------


@dataclass
class _JobService(job_service_pb2_grpc.JobServiceServicer):
    job: job_pb2.Job = field(default_factory=job_pb2.Job)

    def GetJob(self, request: Any, context: Any) -> job_service_pb2.GetJobResponse:
        if request.job_id != self.job.id:
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        return job_service_pb2.GetJobResponse(job=self.job)


@dataclass
class _Notifier(notifier_service_pb2_grpc.NotifierServiceServicer):
    job: job_pb2.Job = field(default_factory=job_pb2.Job)

    def WatchJob(self, request: Any, context: Any) -> Iterator[Any]:
        # Finished jobs come with URLs from a real notifier; these do not, so mediactl asks
        # job_service for them.
        final = job_pb2.Job()
        final.CopyFrom(self.job)
        for output in final.outputs:
            output.url = ""
        yield notifier_service_pb2.WatchJobResponse(cursor="w1", job=final)


@dataclass
class _Servers:
    jobs: _JobService
    notifier: _Notifier


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Servers]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    jobs, notifier = _JobService(), _Notifier()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server(notifier, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("JOB_SERVICE_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("NOTIFIER_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("MEDIA_TOKEN", TOKEN)
    yield _Servers(jobs, notifier)
    server.stop(0)


def test_download_command_prints_each_path(
    servers: _Servers, http_base: str, files: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    servers.jobs.job = _succeeded(
        _served(files, http_base, 0, PNG, content_type="image/png", ext="png"),
        _served(files, http_base, 1, MP4, content_type="video/mp4", ext="mp4"),
    )
    assert main(["download", JOB_ID, "-o", str(tmp_path)]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        str(tmp_path / f"{JOB_ID}-0.png"),
        str(tmp_path / f"{JOB_ID}-1.mp4"),
    ]


def test_download_defaults_to_the_current_directory(
    servers: _Servers,
    http_base: str,
    files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    servers.jobs.job = _succeeded(
        _served(files, http_base, 0, PNG, content_type="image/png", ext="png")
    )
    monkeypatch.chdir(tmp_path)
    assert main(["download", JOB_ID]) == exit_codes.EXIT_OK
    assert (tmp_path / f"{JOB_ID}-0.png").read_bytes() == PNG
    assert capsys.readouterr().out == f"{JOB_ID}-0.png\n"


def test_download_mismatch_reports_removes_and_exits_4(
    servers: _Servers, http_base: str, files: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    output = _served(files, http_base, 0, PNG, content_type="image/png", ext="png")
    output.sha256 = "00" * 32
    servers.jobs.job = _succeeded(output)
    assert main(["download", JOB_ID, "-o", str(tmp_path)]) == exit_codes.EXIT_DOWNLOAD_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: output #0: sha256 mismatch")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [job_pb2.JOB_STATUS_RUNNING, job_pb2.JOB_STATUS_FAILED])
def test_download_refuses_a_job_that_did_not_succeed(
    servers: _Servers, tmp_path: Path, capsys, status: int
) -> None:
    servers.jobs.job = job_pb2.Job(id=JOB_ID, status=status)  # type: ignore[arg-type]
    assert main(["download", JOB_ID, "-o", str(tmp_path)]) == exit_codes.EXIT_DOWNLOAD_FAILED
    err = capsys.readouterr().err
    assert "not SUCCEEDED: only a succeeded job has outputs to download" in err
    assert _leftovers(tmp_path) == [] and _Files.requests == []


def test_download_unknown_job_is_an_rpc_error(servers: _Servers, capsys) -> None:
    servers.jobs.job = _succeeded()
    assert main(["download", "someone-elses"]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err == "error: NOT_FOUND: job not found\n"


def test_watch_with_an_output_dir_shows_files_instead_of_urls(
    servers: _Servers, http_base: str, files: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    job = _succeeded(_served(files, http_base, 0, PNG, content_type="image/png", ext="png"))
    servers.jobs.job = servers.notifier.job = job
    assert main(["watch", JOB_ID, "-o", str(tmp_path)]) == exit_codes.EXIT_OK
    out = capsys.readouterr().out
    assert f"      saved    {tmp_path / f'{JOB_ID}-0.png'}" in out.splitlines()
    assert "url" not in out and "X-Amz-Signature" not in out
    assert (tmp_path / f"{JOB_ID}-0.png").read_bytes() == PNG


def test_watch_with_an_output_dir_exits_4_when_a_file_is_bad(
    servers: _Servers, http_base: str, files: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    output = _served(files, http_base, 0, PNG, content_type="image/png", ext="png")
    output.sha256 = "00" * 32
    servers.jobs.job = servers.notifier.job = _succeeded(output)
    assert main(["watch", JOB_ID, "-o", str(tmp_path)]) == exit_codes.EXIT_DOWNLOAD_FAILED
    assert "sha256 mismatch" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_create_output_dir_needs_watch(servers: _Servers, capsys) -> None:
    argv = ["create", "image", "--prompt", "p", "-o", "out"]
    assert main(argv) == exit_codes.EXIT_USAGE
    assert "add --watch" in capsys.readouterr().err
