"""`mediactl watch --all` and `mediactl watch JOB` against an in-process fake NotifierService: a
grpc.aio server on a free port speaking the real media.v1 proto, run by a thread of its own
while mediactl (a sync client) runs in the test's thread.

Each call the fake receives plays the next script: responses, then an ending (an abort, a clean
end, or Ctrl-C: the fake interrupts the test's thread as the stream opens, so everything before
it has been printed). What mediactl sent (cursor, filters, token) is recorded per call.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from media.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.mediactl import exit_codes
from services.mediactl.feed import FeedState, watch_feed
from services.mediactl.main import main
from services.mediactl.resume import Backoff
from services.mediactl.tokens import StaticToken

TOKEN = "token-1"
Response = notifier_service_pb2.WatchJobsResponse
JobResponse = notifier_service_pb2.WatchJobResponse

IMAGE = job_pb2.MEDIA_KIND_IMAGE
VIDEO = job_pb2.MEDIA_KIND_VIDEO
QUEUED = job_pb2.JOB_STATUS_QUEUED
RUNNING = job_pb2.JOB_STATUS_RUNNING
SUCCEEDED = job_pb2.JOB_STATUS_SUCCEEDED
FAILED = job_pb2.JOB_STATUS_FAILED

A = "01935f3e-7a00-7000-8000-00000000000a"
B = "01935f3e-7a00-7000-8000-00000000000b"
C = "01935f3e-7a00-7000-8000-00000000000c"
D = "01935f3e-7a00-7000-8000-00000000000d"
E = "01935f3e-7a00-7000-8000-00000000000e"


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def job(
    job_id: str,
    status: int,
    version: int,
    progress: int = 0,
    message: str = "",
    *,
    kind: int = IMAGE,
    updated: datetime | None = None,
    **extra: Any,
) -> job_pb2.Job:
    return job_pb2.Job(
        id=job_id,
        kind=kind,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        version=version,
        progress=progress,
        status_message=message,
        update_time=_stamp(updated or datetime.now(UTC)),
        **extra,
    )


def change(cursor: str, value: job_pb2.Job) -> Response:
    return Response(cursor=cursor, job=value)


def heartbeat(cursor: str) -> Response:
    return Response(
        cursor=cursor, heartbeat=notifier_service_pb2.Heartbeat(time=_stamp(datetime.now(UTC)))
    )


def snapshot_done(cursor: str) -> Response:
    return Response(cursor=cursor, snapshot_done=notifier_service_pb2.SnapshotDone())


def reset(cursor: str, reason: str = "cursor older than the retention") -> Response:
    return Response(cursor=cursor, reset=notifier_service_pb2.Reset(reason=reason))


# --- the fake ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Abort:
    code: grpc.StatusCode
    details: str


class _End:
    """The stream ends cleanly (status OK), as a server's max connection age may end it."""


class _Interrupt:
    """Ctrl-C in the test's thread, then the stream stays open until the client goes."""


END = _End()
CTRL_C = _Interrupt()
UNAVAILABLE = Abort(grpc.StatusCode.UNAVAILABLE, "notifier restarting")
EXHAUSTED = Abort(grpc.StatusCode.FAILED_PRECONDITION, "the fake's scripts ran out")

Step = Any  # a response message, Abort, END, CTRL_C, or a callable run at that point


@dataclass
class Seen:
    cursor: str
    authorization: str
    kinds: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    job_id: str = ""


@dataclass
class FakeNotifier(notifier_service_pb2_grpc.NotifierServiceServicer):
    scripts: list[list[Step]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    async def _play(self, context: Any) -> AsyncIterator[Any]:
        steps = self.scripts.pop(0) if self.scripts else [EXHAUSTED]
        for step in steps:
            if isinstance(step, Abort):
                await context.abort(step.code, step.details)
            elif step is END:
                return
            elif step is CTRL_C:
                _thread.interrupt_main()
                await asyncio.Event().wait()  # until the client cancels the call
            elif callable(step):
                step()
            else:
                yield step

    async def WatchJobs(self, request: Any, context: Any) -> AsyncIterator[Response]:  # type: ignore[override]
        self.seen.append(
            Seen(
                request.cursor,
                dict(context.invocation_metadata()).get("authorization", ""),
                list(request.kinds),
                list(request.statuses),
            )
        )
        async for step in self._play(context):
            yield step

    async def WatchJob(self, request: Any, context: Any) -> AsyncIterator[JobResponse]:  # type: ignore[override]
        self.seen.append(
            Seen(
                request.cursor,
                dict(context.invocation_metadata()).get("authorization", ""),
                job_id=request.job_id,
            )
        )
        async for step in self._play(context):
            yield step


@dataclass
class FakeJobs(job_service_pb2_grpc.JobServiceServicer):
    """ListJobs for a re-list after a reset (two per page), GetJob for a watch's final URLs."""

    listed: list[job_pb2.Job] = field(default_factory=list)
    list_requests: list[job_service_pb2.ListJobsRequest] = field(default_factory=list)
    final: job_pb2.Job = field(default_factory=job_pb2.Job)

    async def ListJobs(self, request: Any, context: Any) -> job_service_pb2.ListJobsResponse:  # type: ignore[override]
        self.list_requests.append(request)
        start = int(request.page_token or 0)
        end = start + 2
        return job_service_pb2.ListJobsResponse(
            jobs=self.listed[start:end],
            next_page_token=str(end) if end < len(self.listed) else "",
        )

    async def GetJob(self, request: Any, context: Any) -> job_service_pb2.GetJobResponse:  # type: ignore[override]
        final = job_pb2.Job()
        final.CopyFrom(self.final)
        for output in final.outputs:
            output.url = f"https://s3.example/{output.key}?sig=1"
        return job_service_pb2.GetJobResponse(job=final)


class AioServerThread:
    """A grpc.aio server on its own event loop in a thread of its own."""

    def __init__(self, notifier: FakeNotifier, jobs: FakeJobs) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(notifier, jobs), self.loop).result(
            10
        )

    async def _start(self, notifier: FakeNotifier, jobs: FakeJobs) -> int:
        self.server = grpc.aio.server()
        notifier_service_pb2_grpc.add_NotifierServiceServicer_to_server(notifier, self.server)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Fake:
    notifier: FakeNotifier
    jobs: FakeJobs
    addr: str


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    notifier, jobs = FakeNotifier(), FakeJobs()
    server = AioServerThread(notifier, jobs)
    addr = f"127.0.0.1:{server.port}"
    monkeypatch.setenv("NOTIFIER_ADDR", addr)
    monkeypatch.setenv("JOB_SERVICE_ADDR", addr)
    monkeypatch.setenv("MEDIA_TOKEN", TOKEN)
    monkeypatch.delenv("MEDIA_TOKEN_FILE", raising=False)
    try:
        yield Fake(notifier, jobs, addr)
    finally:
        server.stop()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _ids_and_versions(lines: list[dict[str, Any]]) -> list[tuple[str, str] | str]:
    """Each printed line as (job id, version), or the name of its event."""
    shown: list[tuple[str, str] | str] = []
    for line in lines:
        if "job" in line:
            shown.append((line["job"]["id"], line["job"]["version"]))
        else:
            shown.append(next(key for key in line if key != "cursor"))
    return shown


# --- watch --all -------------------------------------------------------------------------------


def test_feed_resumes_with_the_last_cursor_and_shows_nothing_twice(fake: Fake, capsys) -> None:
    fake.notifier.scripts = [
        [
            change("c1", job(A, QUEUED, 1)),
            change("c2", job(B, RUNNING, 4, 30, "generating")),
            snapshot_done("c3"),
            heartbeat("c4"),
            change("c5", job(A, RUNNING, 2, 0, "claimed")),
            UNAVAILABLE,
        ],
        [
            heartbeat("c5"),
            change("c5", job(A, RUNNING, 2, 0, "claimed")),  # sent again: dropped by version
            change("c6", job(B, SUCCEEDED, 5, 100, "done")),
            heartbeat("c7"),
            END,  # a clean end (max connection age) is resumed the same way
        ],
        [change("c8", job(A, FAILED, 3, 0, "failed")), UNAVAILABLE],
        [CTRL_C],
    ]
    assert main(["watch", "--all", "--json"]) == exit_codes.EXIT_OK  # Ctrl-C is its normal end
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)
    assert _ids_and_versions(lines) == [
        (A, "1"),
        (B, "4"),
        "snapshotDone",
        (A, "2"),
        (B, "5"),
        (A, "3"),
    ]
    assert [line["cursor"] for line in lines] == ["c1", "c2", "c3", "c5", "c6", "c8"]
    # Resumed after the last message of each stream, heartbeats included.
    assert [seen.cursor for seen in fake.notifier.seen] == ["", "c5", "c7", "c8"]
    assert all(seen.authorization == f"Bearer {TOKEN}" for seen in fake.notifier.seen)
    assert captured.err.count("reconnecting in") == 3
    assert "UNAVAILABLE: notifier restarting" in captured.err


def test_feed_prints_one_line_per_change_and_a_line_when_the_snapshot_is_done(
    fake: Fake, capsys
) -> None:
    fake.notifier.scripts = [
        [
            change("c1", job(A, RUNNING, 3, 40, "generating\nframe 12", attempt=1)),
            snapshot_done("c2"),
            heartbeat("c3"),
            heartbeat("c4"),
            change("c5", job(C, QUEUED, 1, kind=VIDEO)),
            change(
                "c6",
                job(
                    A,
                    FAILED,
                    4,
                    40,
                    "gave up",
                    error=job_pb2.JobError(
                        code=job_pb2.ERROR_CODE_GENERATION_FAILED, message="boom"
                    ),
                ),
            ),
            UNAVAILABLE,
        ],
        [CTRL_C],
    ]
    assert main(["watch", "--all"]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"{A}  image  RUNNING    40%  generating frame 12",
        "-- snapshot done (1 job); live changes follow",
        f"{C}  video  QUEUED      0%",
        f"{A}  image  FAILED     40%  gave up  (GENERATION_FAILED: boom)",
    ]


def test_feed_sends_its_filters_on_every_call(fake: Fake, capsys) -> None:
    fake.notifier.scripts = [[snapshot_done("c1"), UNAVAILABLE], [CTRL_C]]
    argv = ["watch", "--all", "--kind", "video", "--status", "succeeded", "--status", "FAILED"]
    assert main(argv) == exit_codes.EXIT_OK
    assert [(s.kinds, s.statuses, s.cursor) for s in fake.notifier.seen] == [
        ([VIDEO], [SUCCEEDED, FAILED], ""),
        ([VIDEO], [SUCCEEDED, FAILED], "c1"),
    ]
    assert capsys.readouterr().out == "-- snapshot done (0 jobs); live changes follow\n"


def test_feed_opened_again_without_a_cursor_does_not_repeat_its_snapshot(
    fake: Fake, capsys
) -> None:
    # A server without cursors: every stream opens with the snapshot again.
    snapshot = [change("", job(A, QUEUED, 1)), snapshot_done("")]
    fake.notifier.scripts = [
        [*snapshot, UNAVAILABLE],
        [*snapshot, change("", job(A, RUNNING, 2)), UNAVAILABLE],
        [CTRL_C],
    ]
    assert main(["watch", "--all"]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"{A}  image  QUEUED      0%",
        "-- snapshot done (1 job); live changes follow",
        f"{A}  image  RUNNING     0%",
    ]
    assert [seen.cursor for seen in fake.notifier.seen] == ["", "", ""]


def test_feed_reset_lists_the_jobs_again_and_shows_what_changed_meanwhile(
    fake: Fake, capsys
) -> None:
    now = datetime.now(UTC)
    fake.jobs.listed = [  # newest first, as ListJobs answers
        job(E, SUCCEEDED, 3, 100, updated=now + timedelta(seconds=5)),  # made and done meanwhile
        job(C, RUNNING, 2, 10, updated=now + timedelta(seconds=4)),  # made meanwhile
        job(B, SUCCEEDED, 9, 100, updated=now - timedelta(days=3)),  # history: never shown
        job(A, SUCCEEDED, 5, 100, updated=now + timedelta(seconds=3)),  # shown at version 1
        job(D, RUNNING, 1, kind=VIDEO, updated=now + timedelta(seconds=2)),  # not --kind image
    ]
    fake.notifier.scripts = [
        [change("c1", job(A, QUEUED, 1)), snapshot_done("c2"), UNAVAILABLE],
        [
            reset("n1", "cursor expired"),
            change("n2", job(C, RUNNING, 2, 10)),  # what the re-list already showed
            change("n3", job(C, SUCCEEDED, 3, 100)),
            UNAVAILABLE,
        ],
        [CTRL_C],
    ]
    assert main(["watch", "--all", "--kind", "image"]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"{A}  image  QUEUED      0%",
        "-- snapshot done (1 job); live changes follow",
        "-- reset (cursor expired): listed the jobs again; 3 changed meanwhile",
        f"{A}  image  SUCCEEDED 100%",  # oldest change first
        f"{C}  image  RUNNING    10%",
        f"{E}  image  SUCCEEDED 100%",
        f"{C}  image  SUCCEEDED 100%",
    ]
    assert [seen.cursor for seen in fake.notifier.seen] == ["", "c2", "n3"]
    # Every page, filtered on the one kind asked for.
    assert [(r.kind, r.page_token) for r in fake.jobs.list_requests] == [
        (IMAGE, ""),
        (IMAGE, "2"),
        (IMAGE, "4"),
    ]


def test_feed_reset_in_json_is_printed_with_the_listed_jobs(fake: Fake, capsys) -> None:
    fake.jobs.listed = [job(A, RUNNING, 2, updated=datetime.now(UTC) + timedelta(seconds=1))]
    fake.notifier.scripts = [[reset("n1", "too old"), UNAVAILABLE], [CTRL_C]]
    assert main(["watch", "--all", "--json"]) == exit_codes.EXIT_OK
    lines = _json_lines(capsys.readouterr().out)
    assert lines[0] == {"cursor": "n1", "reset": {"reason": "too old"}}
    assert lines[1]["cursor"] == "" and lines[1]["job"]["id"] == A
    assert len(lines) == 2


def test_feed_reset_without_a_job_service_says_what_was_lost(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("JOB_SERVICE_ADDR")
    fake.notifier.scripts = [[reset("n1", "too old"), change("n2", job(A, QUEUED, 1)), UNAVAILABLE]]
    fake.notifier.scripts.append([CTRL_C])
    assert main(["watch", "--all"]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "-- reset (too old): changes were missed; `mediactl list` shows every job",
        f"{A}  image  QUEUED      0%",
    ]
    assert fake.jobs.list_requests == []


def test_feed_with_an_expired_fixed_token_reports_and_exits_3(fake: Fake, capsys) -> None:
    fake.notifier.scripts = [
        [
            change("c1", job(A, QUEUED, 1)),
            Abort(grpc.StatusCode.UNAUTHENTICATED, "token expired"),
        ]
    ]
    assert main(["watch", "--all"]) == exit_codes.EXIT_RPC_ERROR
    captured = capsys.readouterr()
    assert captured.out == f"{A}  image  QUEUED      0%\n"
    assert captured.err.startswith("error: UNAUTHENTICATED: token expired\n")
    assert "MEDIA_TOKEN_FILE" in captured.err
    assert len(fake.notifier.seen) == 1  # the same token would be refused the same way


def test_feed_with_a_token_file_reconnects_with_the_fresh_token_and_the_cursor(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    monkeypatch.delenv("MEDIA_TOKEN")
    monkeypatch.setenv("MEDIA_TOKEN_FILE", str(token_file))
    fake.notifier.scripts = [
        [
            change("c1", job(A, QUEUED, 1)),
            lambda: token_file.write_text("token-2\n"),  # what a refresher would do
            Abort(grpc.StatusCode.UNAUTHENTICATED, "token expired"),
        ],
        [change("c2", job(A, RUNNING, 2)), UNAVAILABLE],
        [CTRL_C],
    ]
    assert main(["watch", "--all"]) == exit_codes.EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"{A}  image  QUEUED      0%",
        f"{A}  image  RUNNING     0%",
    ]
    assert [(s.authorization, s.cursor) for s in fake.notifier.seen] == [
        ("Bearer token-1", ""),
        ("Bearer token-2", "c1"),
        ("Bearer token-2", "c2"),
    ]


def test_feed_with_a_token_file_not_renewed_reports_and_exits_3(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    monkeypatch.delenv("MEDIA_TOKEN")
    monkeypatch.setenv("MEDIA_TOKEN_FILE", str(token_file))
    fake.notifier.scripts = [[Abort(grpc.StatusCode.UNAUTHENTICATED, "token expired; watch again")]]
    assert main(["watch", "--all"]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err == (
        f"error: the token expired, and the token file {token_file} holds no newer token\n"
    )
    assert len(fake.notifier.seen) == 1


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),  # a notifier without WatchJobs
        (grpc.StatusCode.UNAUTHENTICATED, "invalid token: bad signature"),
    ],
)
def test_feed_stops_on_errors_reconnecting_cannot_mend(
    fake: Fake, capsys, code: grpc.StatusCode, details: str
) -> None:
    fake.notifier.scripts = [[Abort(code, details)]]
    assert main(["watch", "--all"]) == exit_codes.EXIT_RPC_ERROR
    assert capsys.readouterr().err.startswith(f"error: {code.name}: {details}\n")
    assert len(fake.notifier.seen) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["watch"], "watch needs a JOB_ID, or --all"),
        (["watch", A, "--all"], "a JOB_ID or --all, not both"),
        (["watch", A, "--kind", "image"], "--kind and --status filter the feed"),
        (["watch", "--all", "-o", "out"], "goes with watch JOB_ID"),
    ],
)
def test_watch_usage_errors(fake: Fake, capsys, argv: list[str], message: str) -> None:
    assert main(argv) == exit_codes.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert fake.notifier.seen == []


def test_feed_state_drops_older_versions_and_filters_a_relist() -> None:
    state = FeedState(kinds=frozenset({IMAGE}), statuses=frozenset({SUCCEEDED}))
    assert state.accept(job(A, SUCCEEDED, 3))
    assert not state.accept(job(A, RUNNING, 2))  # older: a late redelivery
    assert not state.accept(job(A, SUCCEEDED, 3))
    later = datetime.now(UTC) + timedelta(minutes=1)
    relisted = state.relisted(
        [
            job(A, SUCCEEDED, 3, updated=later),  # as shown
            job(B, SUCCEEDED, 2, kind=VIDEO, updated=later),  # another kind
            job(C, RUNNING, 2, updated=later),  # another status
            job(D, SUCCEEDED, 4, updated=later),
        ]
    )
    assert [j.id for j in relisted] == [D]


def test_watch_feed_can_be_driven_as_a_library(fake: Fake) -> None:
    fake.notifier.scripts = [
        [change("c1", job(A, QUEUED, 1)), heartbeat("c2"), snapshot_done("c3"), UNAVAILABLE],
        [change("c4", job(A, RUNNING, 2)), EXHAUSTED],
    ]

    @dataclass
    class Sink:
        events: list[str] = field(default_factory=list)

        def job(self, response: Response) -> None:
            self.events.append(f"job {response.job.version}")

        def snapshot_done(self, response: Response, jobs: int) -> None:
            self.events.append(f"snapshot {jobs}")

        def reset(self, response: Response, relisted: Any) -> None:
            self.events.append("reset")

        def reconnecting(self, reason: str, delay: float) -> None:
            self.events.append(f"reconnect {reason}")

    sink = Sink()
    delays: list[float] = []
    with grpc.insecure_channel(fake.addr) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            watch_feed(
                notifier_service_pb2_grpc.NotifierServiceStub(channel),
                StaticToken(TOKEN),
                sink,
                backoff=Backoff(max_failures=None),
                sleep=delays.append,
            )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert sink.events == [
        "job 1",
        "snapshot 1",
        "reconnect UNAVAILABLE: notifier restarting",
        "job 2",
    ]
    assert len(delays) == 1


# --- watch JOB ---------------------------------------------------------------------------------


def _job_change(cursor: str, value: job_pb2.Job) -> JobResponse:
    return JobResponse(cursor=cursor, job=value)


def _job_heartbeat(cursor: str) -> JobResponse:
    return JobResponse(cursor=cursor, heartbeat=notifier_service_pb2.Heartbeat())


OUTPUT = job_pb2.Output(
    index=0, key=f"jobs/{A}/1/output-0.png", content_type="image/png", sha256="ab" * 32
)


def test_watch_job_resumes_with_the_cursor_ignores_heartbeats_and_handles_a_reset(
    fake: Fake, capsys
) -> None:
    done = job(A, SUCCEEDED, 5, 100, "done", attempt=1, outputs=[OUTPUT])
    fake.jobs.final = done
    fake.notifier.scripts = [
        [
            _job_change("w1", job(A, QUEUED, 1)),
            _job_heartbeat("w2"),
            _job_change("w3", job(A, RUNNING, 2, 0, "claimed", attempt=1)),
            UNAVAILABLE,
        ],
        [
            _job_heartbeat("w3"),
            _job_change("w4", job(A, RUNNING, 3, 50, "generating", attempt=1)),
            END,
        ],
        [
            JobResponse(cursor="x1", reset=notifier_service_pb2.Reset(reason="cursor expired")),
            _job_change("x2", job(A, RUNNING, 4, 90, "encoding", attempt=1)),  # as it is now
            _job_heartbeat("x3"),
            _job_change("x4", done),
        ],
    ]
    assert main(["watch", A, "--json"]) == exit_codes.EXIT_OK
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)
    assert [line["job"]["version"] for line in lines] == ["1", "2", "3", "4", "5", "5"]
    assert lines[-1]["job"]["outputs"][0]["url"].startswith("https://s3.example/")
    assert [(s.job_id, s.cursor) for s in fake.notifier.seen] == [(A, ""), (A, "w3"), (A, "w4")]
    assert "could not resume (cursor expired); showing the job as it is now" in captured.err


def test_watch_job_text_shows_each_status_once_across_a_reconnect(fake: Fake, capsys) -> None:
    fake.jobs.final = job(A, FAILED, 4, 50, "failed", attempt=1)
    fake.notifier.scripts = [
        [_job_change("w1", job(A, QUEUED, 1)), _job_heartbeat("w2"), UNAVAILABLE],
        [
            _job_change("w1", job(A, QUEUED, 1)),  # a replay: dropped by version
            _job_change("w3", job(A, RUNNING, 2, 0, "claimed", attempt=1)),
            _job_change(
                "w4",
                job(
                    A,
                    FAILED,
                    4,
                    50,
                    "failed",
                    attempt=1,
                    error=job_pb2.JobError(code=job_pb2.ERROR_CODE_NO_MEDIA, message="none"),
                ),
            ),
        ],
    ]
    assert main(["watch", A]) == exit_codes.EXIT_JOB_FAILED
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "QUEUED      0%",
        "RUNNING     0%  attempt 1  claimed",
        "FAILED     50%  attempt 1  failed  (NO_MEDIA: none)",
    ]
    assert [s.cursor for s in fake.notifier.seen] == ["", "w2"]


def test_watch_job_with_an_expired_fixed_token_exits_3(fake: Fake, capsys) -> None:
    fake.notifier.scripts = [
        [
            _job_change("w1", job(A, QUEUED, 1)),
            Abort(grpc.StatusCode.UNAUTHENTICATED, "token expired"),
        ]
    ]
    assert main(["watch", A]) == exit_codes.EXIT_RPC_ERROR
    assert "error: UNAUTHENTICATED: token expired" in capsys.readouterr().err
    assert len(fake.notifier.seen) == 1


def test_watch_job_with_a_token_file_resumes_with_a_fresh_token(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1")
    fake.jobs.final = job(A, SUCCEEDED, 3, 100)
    fake.notifier.scripts = [
        [
            _job_change("w1", job(A, QUEUED, 1)),
            lambda: token_file.write_text("token-2"),
            Abort(grpc.StatusCode.UNAUTHENTICATED, "token expired"),
        ],
        [_job_change("w2", job(A, SUCCEEDED, 3, 100))],
    ]
    argv = ["watch", A, "--token-file", str(token_file)]  # the flag beats MEDIA_TOKEN
    assert main(argv) == exit_codes.EXIT_OK
    assert [(s.authorization, s.cursor) for s in fake.notifier.seen] == [
        ("Bearer token-1", ""),
        ("Bearer token-2", "w1"),
    ]
    assert "token expired; a fresh one was read" in capsys.readouterr().err
