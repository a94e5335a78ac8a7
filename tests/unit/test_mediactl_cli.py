"""mediactl end to end against in-process stand-ins for JobService and NotifierService.

The stand-ins are real gRPC servers on local ports, so channels, metadata, deadlines, status
details and stream breaks are the real thing; only the job state behind them is scripted.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from PIL import Image

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common.auth import TokenVerifier
from services.common.config import AuthSettings
from services.common.errors import invalid_argument
from services.mediactl import exit_codes
from services.mediactl.main import main
from services.mediactl.tokens import StaticToken
from services.mediactl.watch import Backoff, WatchError, watch_job

TOKEN = "test-token"
JOB_ID = "01935f3e-7a00-7000-8000-0000000000aa"
URL = "https://s3.example/media/jobs/x/output-0.png?sig=1"


def _job(status: int, version: int, progress: int = 0, message: str = "", **extra) -> job_pb2.Job:
    extra.setdefault("id", JOB_ID)
    return job_pb2.Job(
        kind=job_pb2.MEDIA_KIND_IMAGE,
        status=status,  # type: ignore[arg-type]
        progress=progress,
        status_message=message,
        version=version,
        image=job_pb2.ImageParams(prompt="a red fox"),
        **extra,
    )


OUTPUT = job_pb2.Output(
    index=0,
    bucket="media",
    key=f"jobs/{JOB_ID}/output-0.png",
    content_type="image/png",
    byte_size=1234,
    width=256,
    height=256,
    sha256="cd" * 32,
)
QUEUED = _job(job_pb2.JOB_STATUS_QUEUED, 1)
RUNNING = _job(job_pb2.JOB_STATUS_RUNNING, 2, 0, "claimed", attempt=1)
HALF = _job(job_pb2.JOB_STATUS_RUNNING, 3, 50, "generating", attempt=1)
SUCCEEDED = _job(job_pb2.JOB_STATUS_SUCCEEDED, 4, 100, "done", attempt=1, outputs=[OUTPUT])
FAILED = _job(
    job_pb2.JOB_STATUS_FAILED,
    4,
    50,
    "failed",
    attempt=1,
    error=job_pb2.JobError(code=job_pb2.ERROR_CODE_GENERATION_FAILED, message="boom"),
)
CANCELED = _job(job_pb2.JOB_STATUS_CANCELED, 3, 0, "canceled")


def _authorized(context: grpc.ServicerContext) -> bool:
    return dict(context.invocation_metadata()).get("authorization") == f"Bearer {TOKEN}"


@dataclass
class FakeJobService(job_service_pb2_grpc.JobServiceServicer):
    requests: list[object] = field(default_factory=list)
    final: job_pb2.Job = field(default_factory=job_pb2.Job)
    upload_url: str = ""  # what CreateInputUpload answers

    def CreateInputUpload(self, request, context):
        if not _authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        self.requests.append(request)
        return job_service_pb2.CreateInputUploadResponse(
            upload_id="upload-1", url=self.upload_url, headers={"Content-Type": request.mime_type}
        )

    def CreateJob(self, request, context):
        if not _authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        self.requests.append(request)
        if request.image.prompt == "bad":
            violations = [
                ("image.prompt", "must not be only spaces"),
                ("image.size", "not offered"),
            ]
            context.abort_with_status(invalid_argument(violations).to_status())
        created = request.request_id != "seen"
        job = QUEUED if created else RUNNING
        job = job_pb2.Job(
            id=job.id, kind=job.kind, status=job.status, request_id=request.request_id
        )
        return job_service_pb2.CreateJobResponse(job=job, created=created)

    def GetJob(self, request, context):
        if not _authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        if request.job_id != JOB_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        job = job_pb2.Job()
        job.CopyFrom(self.final)
        for output in job.outputs:
            output.url = URL
        return job_service_pb2.GetJobResponse(job=job)

    def ListJobs(self, request, context):
        self.requests.append(request)
        # Three jobs, two per page; the token is the offset.
        jobs = [_job(job_pb2.JOB_STATUS_QUEUED, 1, id=f"job-{i}") for i in (3, 2, 1)]
        start = int(request.page_token or 0)
        size = request.page_size or 2
        end = start + size
        return job_service_pb2.ListJobsResponse(
            jobs=jobs[start:end], next_page_token=str(end) if end < len(jobs) else ""
        )

    def CancelJob(self, request, context):
        return job_service_pb2.CancelJobResponse(job=CANCELED)


@dataclass
class FakeNotifier(notifier_service_pb2_grpc.NotifierServiceServicer):
    # One script per WatchJob call: the jobs to send, then whether to break with UNAVAILABLE.
    scripts: list[tuple[list[job_pb2.Job], bool]] = field(default_factory=list)
    calls: int = 0

    def WatchJob(self, request, context):
        if not _authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        if request.job_id != JOB_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, "job not found")
        self.calls += 1
        jobs, breaks = self.scripts.pop(0)
        for job in jobs:
            yield notifier_service_pb2.WatchJobResponse(job=job)
        if breaks:
            context.abort(grpc.StatusCode.UNAVAILABLE, "notifier restarting")


@dataclass
class Fakes:
    jobs: FakeJobService
    notifier: FakeNotifier
    job_addr: str
    notifier_addr: str


@pytest.fixture(scope="module")
def fake_servers() -> Iterator[tuple[grpc.Server, grpc.Server, str, str]]:
    job_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    notifier_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    job_port = job_server.add_insecure_port("127.0.0.1:0")
    notifier_port = notifier_server.add_insecure_port("127.0.0.1:0")
    yield job_server, notifier_server, f"127.0.0.1:{job_port}", f"127.0.0.1:{notifier_port}"
    job_server.stop(0)
    notifier_server.stop(0)


@pytest.fixture(scope="module")
def fakes(fake_servers) -> Fakes:
    job_server, notifier_server, job_addr, notifier_addr = fake_servers
    jobs, notifier = FakeJobService(), FakeNotifier()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, job_server)
    notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server(notifier, notifier_server)
    job_server.start()
    notifier_server.start()
    return Fakes(jobs, notifier, job_addr, notifier_addr)


@pytest.fixture
def env(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    monkeypatch.setenv("JOB_SERVICE_ADDR", fakes.job_addr)
    monkeypatch.setenv("NOTIFIER_ADDR", fakes.notifier_addr)
    monkeypatch.setenv("MEDIA_TOKEN", TOKEN)
    fakes.jobs.requests.clear()
    fakes.jobs.final = SUCCEEDED
    fakes.notifier.scripts.clear()
    fakes.notifier.calls = 0
    return fakes


def test_create_image_sends_the_request_with_the_token(env: Fakes, capsys) -> None:
    code = main(["create", "image", "--prompt", "a red fox", "--count", "2"])
    assert code == exit_codes.EXIT_OK
    assert capsys.readouterr().out == f"created job {JOB_ID}  (image, QUEUED)\n"
    (request,) = env.jobs.requests
    assert request.image.prompt == "a red fox"
    assert request.image.number_of_images == 2
    assert request.request_id


@dataclass
class Storage:
    """Stands in for object storage behind a presigned PUT URL: records each PUT."""

    url: str
    puts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def storage() -> Iterator[Storage]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    made = Storage(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            made.puts.append((self.path, dict(self.headers), body))
            self.send_response(made.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()


def _png_file(tmp_path) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 90, 200)).save(buffer, format="PNG")
    path = tmp_path / "input.png"
    path.write_bytes(buffer.getvalue())
    return str(path), buffer.getvalue()


def test_create_uploads_the_input_image_then_names_the_upload(
    env: Fakes, storage: Storage, tmp_path, capsys
) -> None:
    env.jobs.upload_url = f"{storage.url}/media/uploads/upload-1?X-Amz-Signature=abc"
    path, data = _png_file(tmp_path)
    code = main(["create", "image", "--prompt", "p", "--input-image", path])
    assert code == exit_codes.EXIT_OK, capsys.readouterr().err
    asked, created = env.jobs.requests
    assert asked == job_service_pb2.CreateInputUploadRequest(
        mime_type="image/png", byte_size=len(data)
    )
    # A plain HTTP PUT of the file to the URL, with the headers the server gave.
    [(where, headers, body)] = storage.puts
    assert where == "/media/uploads/upload-1?X-Amz-Signature=abc"
    assert body == data
    assert headers["Content-Type"] == "image/png" and headers["Content-Length"] == str(len(data))
    # The image is not in the CreateJob message, only the upload.
    assert created.image.input_image == job_pb2.InputImage(
        upload_id="upload-1", mime_type="image/png"
    )


def test_a_refused_upload_is_an_error_and_creates_nothing(
    env: Fakes, storage: Storage, tmp_path, capsys
) -> None:
    storage.status = 403
    env.jobs.upload_url = f"{storage.url}/media/uploads/upload-1"
    path, _ = _png_file(tmp_path)
    code = main(["create", "image", "--prompt", "p", "--input-image", path])
    assert code == exit_codes.EXIT_RPC_ERROR
    assert "refused the input image: HTTP 403" in capsys.readouterr().err
    assert [type(r) for r in env.jobs.requests] == [job_service_pb2.CreateInputUploadRequest]


def test_create_with_a_known_request_id_says_so(env: Fakes, capsys) -> None:
    code = main(["create", "image", "--prompt", "p", "--request-id", "seen"])
    assert code == exit_codes.EXIT_OK
    assert "already exists for request id seen" in capsys.readouterr().out


def test_invalid_argument_prints_code_message_and_each_field(env: Fakes, capsys) -> None:
    code = main(["create", "image", "--prompt", "bad"])
    assert code == exit_codes.EXIT_RPC_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: INVALID_ARGUMENT: ")
    assert "  image.prompt: must not be only spaces" in err
    assert "  image.size: not offered" in err
    assert not any("--request-id" in line for line in err)  # nothing was created


def test_flags_override_the_environment(env: Fakes, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MEDIA_TOKEN", "wrong")
    monkeypatch.setenv("JOB_SERVICE_ADDR", "127.0.0.1:1")
    code = main(["get", JOB_ID, "--addr", env.job_addr, "--token", TOKEN])
    assert code == exit_codes.EXIT_OK
    assert f"job:       {JOB_ID}" in capsys.readouterr().out


def test_wrong_token_is_an_rpc_error(env: Fakes, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MEDIA_TOKEN", "wrong")
    assert main(["get", JOB_ID]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err == "error: UNAUTHENTICATED: missing token\n"


@pytest.mark.parametrize(
    ("unset", "argv", "message"),
    [
        ("JOB_SERVICE_ADDR", ["get", JOB_ID], "set JOB_SERVICE_ADDR or pass --addr"),
        ("MEDIA_TOKEN", ["list"], "set MEDIA_TOKEN or pass --token"),
        ("NOTIFIER_ADDR", ["watch", JOB_ID], "set NOTIFIER_ADDR or pass --notifier-addr"),
        ("NOTIFIER_ADDR", ["create", "image", "--prompt", "p", "--watch"], "NOTIFIER_ADDR"),
    ],
)
def test_missing_settings_are_clear_errors(
    env: Fakes, monkeypatch, capsys, unset: str, argv: list[str], message: str
) -> None:
    monkeypatch.delenv(unset)
    assert main(argv) == exit_codes.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert env.jobs.requests == []  # --watch without a notifier creates nothing


def test_malformed_settings_are_usage_errors(env: Fakes, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GRPC_MAX_MESSAGE_BYTES", "lots")
    assert main(["get", JOB_ID]) == exit_codes.EXIT_USAGE
    assert "GRPC_MAX_MESSAGE_BYTES must be an integer" in capsys.readouterr().err


def test_get_json(env: Fakes, capsys) -> None:
    assert main(["get", JOB_ID, "--json"]) == exit_codes.EXIT_OK
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["job"]["status"] == "JOB_STATUS_SUCCEEDED"
    assert parsed["job"]["outputs"][0]["url"] == URL


def test_get_unknown_job(env: Fakes, capsys) -> None:
    assert main(["get", "nope"]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err == "error: NOT_FOUND: job not found\n"


def test_list_one_page_prints_the_next_token(env: Fakes, capsys) -> None:
    assert main(["list", "--kind", "image", "--status", "queued"]) == exit_codes.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["job-3", "job-2"]
    assert out[-1] == "next page token: 2"
    (request,) = env.jobs.requests
    assert request.kind == job_pb2.MEDIA_KIND_IMAGE
    assert request.status == job_pb2.JOB_STATUS_QUEUED


def test_list_all_follows_tokens(env: Fakes, capsys) -> None:
    assert main(["list", "--all", "--json"]) == exit_codes.EXIT_OK
    parsed = json.loads(capsys.readouterr().out)
    assert [job["id"] for job in parsed["jobs"]] == ["job-3", "job-2", "job-1"]
    assert parsed["nextPageToken"] == ""
    assert len(env.jobs.requests) == 2


def test_cancel(env: Fakes, capsys) -> None:
    assert main(["cancel", JOB_ID]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out == f"{JOB_ID}  image  CANCELED  0%\n"


def test_watch_succeeded_prints_each_status_then_the_job_with_urls(env: Fakes, capsys) -> None:
    env.notifier.scripts.append(([QUEUED, RUNNING, HALF, SUCCEEDED], False))
    assert main(["watch", JOB_ID]) == exit_codes.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    # Not a terminal (captured): one line per status change, no bar.
    assert out[:3] == [
        "QUEUED      0%",
        "RUNNING     0%  attempt 1  claimed",
        "SUCCEEDED 100%  attempt 1  done",
    ]
    assert f"      url      {URL}" in out  # read from job_service: events carry no URLs
    assert "  #0  image/png, 1.2 KiB, 256x256" in out


def test_watch_failed_exits_1_with_the_error(env: Fakes, capsys) -> None:
    env.notifier.scripts.append(([RUNNING, FAILED], False))
    assert main(["watch", JOB_ID]) == exit_codes.EXIT_JOB_FAILED
    captured = capsys.readouterr()
    assert "job failed: GENERATION_FAILED: boom" in captured.err
    assert "error:     GENERATION_FAILED: boom" in captured.out


def test_watch_canceled_exits_2(env: Fakes, capsys) -> None:
    env.notifier.scripts.append(([QUEUED, CANCELED], False))
    assert main(["watch", JOB_ID]) == exit_codes.EXIT_JOB_CANCELED


def test_watch_reconnects_after_unavailable_without_repeating(env: Fakes, capsys) -> None:
    env.notifier.scripts.append(([QUEUED, RUNNING], True))
    env.notifier.scripts.append(([RUNNING, HALF, SUCCEEDED], False))  # replays RUNNING first
    assert main(["watch", JOB_ID, "--json"]) == exit_codes.EXIT_OK
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["job"]["version"] for line in lines] == ["1", "2", "3", "4", "4"]
    assert lines[-1]["job"]["outputs"][0]["url"] == URL  # the final GetJob
    assert "UNAVAILABLE: notifier restarting" in captured.err
    assert env.notifier.calls == 2


def test_watch_unknown_job_is_an_rpc_error(env: Fakes, capsys) -> None:
    assert main(["watch", "other-users-job"]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err == "error: NOT_FOUND: job not found\n"


def test_create_then_watch(env: Fakes, capsys) -> None:
    env.notifier.scripts.append(([QUEUED, RUNNING, SUCCEEDED], False))
    assert main(["create", "image", "--prompt", "p", "--watch"]) == exit_codes.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"created job {JOB_ID}  (image, QUEUED)"
    assert out[1] == "QUEUED      0%"


def test_watch_gives_up_when_the_notifier_stays_unreachable() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        retries: list[float] = []
        with pytest.raises(grpc.RpcError) as raised:
            watch_job(
                stub,
                JOB_ID,
                StaticToken(TOKEN),
                lambda job: None,
                on_reconnect=lambda reason, delay: retries.append(delay),
                backoff=Backoff(max_failures=3),
                sleep=lambda seconds: None,
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert len(retries) == 3
    assert retries[0] <= 0.25 and retries[2] <= 1.0


def test_token_mints_a_token_the_services_accept(monkeypatch, capsys) -> None:
    secret = "s" * 40
    monkeypatch.setenv("MY_SECRET", secret)
    argv = ["token", "--secret-env", "MY_SECRET", "--subject", "alice", "--ttl", "60"]
    assert main(argv) == exit_codes.EXIT_OK
    token = capsys.readouterr().out.strip()
    identity = TokenVerifier(AuthSettings(jwt_secret=secret, audience="media", issuer="")).verify(
        token
    )
    assert identity.subject == "alice"
    assert not identity.is_worker


def test_token_without_a_secret(monkeypatch, capsys) -> None:
    monkeypatch.delenv("AUTH_JWT_SECRET", raising=False)
    assert main(["token", "--subject", "alice"]) == exit_codes.EXIT_USAGE
    assert "AUTH_JWT_SECRET must hold the signing secret" in capsys.readouterr().err


def _watch(
    fakes: Fakes, backoff: Backoff, clock: bool = False
) -> tuple[list[job_pb2.Job], list[str]]:
    seen: list[job_pb2.Job] = []
    reasons: list[str] = []
    ticks = iter(range(0, 10**6, 100))  # each stream "lives" 100 s when a clock is asked for
    with grpc.insecure_channel(fakes.notifier_addr) as channel:
        watch_job(
            notifier_service_pb2_grpc.NotifierServiceStub(channel),
            JOB_ID,
            StaticToken(TOKEN),
            seen.append,
            on_reconnect=lambda reason, delay: reasons.append(reason),
            backoff=backoff,
            sleep=lambda seconds: None,
            clock=(lambda: float(next(ticks))) if clock else (lambda: 0.0),
        )
    return seen, reasons


def test_watch_gives_up_on_streams_that_only_replay(env: Fakes) -> None:
    env.notifier.scripts.append(([QUEUED, RUNNING], False))
    env.notifier.scripts.extend([([RUNNING], False)] * 3)
    with pytest.raises(WatchError, match="ended before the job finished"):
        _watch(env, Backoff(max_failures=2))
    assert env.notifier.calls == 3  # three breaks in a row, the last two without news: > 2


def test_watch_keeps_following_long_lived_streams_without_news(env: Fakes) -> None:
    # A job waiting in the queue while max connection age cuts each stream: not failures.
    env.notifier.scripts.append(([QUEUED], True))
    env.notifier.scripts.extend([([QUEUED], True)] * 4)
    env.notifier.scripts.append(([QUEUED, RUNNING, SUCCEEDED], False))
    seen, reasons = _watch(env, Backoff(max_failures=1), clock=True)
    assert [job.status for job in seen] == [
        job_pb2.JOB_STATUS_QUEUED,
        job_pb2.JOB_STATUS_RUNNING,
        job_pb2.JOB_STATUS_SUCCEEDED,
    ]
    assert reasons == ["UNAVAILABLE: notifier restarting"] * 5
