"""What each mediactl command does once its arguments are parsed: one handler per command, which
returns the exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import cast

import grpc

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import mint_token
from services.mediactl import build, download, render, upload
from services.mediactl.client import (
    ConfigError,
    Connection,
    JobService,
    describe_rpc_error,
    list_pages,
)
from services.mediactl.exit_codes import (
    EXIT_DOWNLOAD_FAILED,
    EXIT_INTERRUPTED,
    EXIT_JOB_CANCELED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_RPC_ERROR,
)
from services.mediactl.feed import watch_feed
from services.mediactl.settings import signing_secret
from services.mediactl.watch import watch_job

# After these codes a create may or may not have happened, so a retry needs the same request_id.
_AMBIGUOUS_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

Handler = Callable[[argparse.Namespace, Connection], int]
JobResponse = job_service_pb2.GetJobResponse | job_service_pb2.CancelJobResponse


def cmd_create(args: argparse.Namespace, conn: Connection) -> int:
    if args.output_dir and not args.watch:
        raise ConfigError("-o/--output-dir saves the outputs after --watch; add --watch")
    # Read (and refused, if it is no image) before anything is sent.
    image = build.read_input_image(args.input_image) if args.input_image else None
    with conn.job_service() as jobs:
        if args.watch:
            conn.require_notifier()  # before creating, not after
        request = build.create_request(args)
        if image is not None:
            try:
                upload_id = upload.send_input_image(jobs, image, conn.timeout)
            except upload.UploadError as exc:
                render.err(f"error: {exc}")
                return EXIT_RPC_ERROR
            build.with_upload(request, upload_id, image.mime_type)
        try:
            response = jobs.create(request)
        except grpc.RpcError as exc:
            render.err(*describe_rpc_error(exc))
            if cast(grpc.Call, exc).code() in _AMBIGUOUS_CODES:
                render.err(
                    "the job may have been created; retry with --request-id "
                    f"{request.request_id} to get it instead of a second one"
                )
            return EXIT_RPC_ERROR
    job = response.job
    if args.json:
        print(render.to_json(response, compact=args.watch), flush=True)
    else:
        state = f"({lifecycle.kind_name(job.kind)}, {lifecycle.status_name(job.status)})"
        if response.created:
            print(f"created job {job.id}  {state}")
        else:
            print(f"job {job.id} already exists for request id {job.request_id}  {state}")
        if response.webhook_secret:
            print("\n".join(render.secret_lines(response.webhook_secret, "webhook secret")))
    if not args.watch:
        return EXIT_OK
    return _follow(conn, job.id, as_json=args.json, output_dir=args.output_dir)


def _job_command(
    call: Callable[[JobService, str], JobResponse],
    show: Callable[[job_pb2.Job], str],
) -> Handler:
    """A command that makes one call about the job JOB_ID and shows the job it answers with."""

    def handler(args: argparse.Namespace, conn: Connection) -> int:
        with conn.job_service() as jobs:
            response = call(jobs, args.job_id)
        print(render.to_json(response) if args.json else show(response.job))
        return EXIT_OK

    return handler


cmd_get = _job_command(JobService.get, render.render_job)
cmd_cancel = _job_command(JobService.cancel, render.render_summary)


def _jobs(response: job_service_pb2.ListJobsResponse) -> Iterable[job_pb2.Job]:
    return response.jobs


def cmd_list(args: argparse.Namespace, conn: Connection) -> int:
    request = build.list_request(args)
    with conn.job_service() as service:
        jobs, next_token = list_pages(service.list, request, _jobs, all_pages=args.all)
    if args.json:
        print(
            render.to_json(job_service_pb2.ListJobsResponse(jobs=jobs, next_page_token=next_token))
        )
        return EXIT_OK
    print(render.render_table(jobs))
    if next_token:
        print(f"next page token: {next_token}")
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, conn: Connection) -> int:
    if args.all:
        if args.job_id:
            raise ConfigError("watch takes a JOB_ID or --all, not both")
        if args.output_dir:
            raise ConfigError("-o/--output-dir goes with watch JOB_ID, not --all")
        return _feed(conn, kinds=args.kinds, statuses=args.statuses, as_json=args.json)
    if not args.job_id:
        raise ConfigError("watch needs a JOB_ID, or --all for every change to your jobs")
    if args.kinds or args.statuses:
        raise ConfigError("--kind and --status filter the feed of watch --all")
    if args.output_dir:
        conn.require_job_service()  # where the download URLs come from; said before watching
    return _follow(conn, args.job_id, as_json=args.json, output_dir=args.output_dir)


def cmd_download(args: argparse.Namespace, conn: Connection) -> int:
    with conn.job_service() as jobs:
        job = jobs.get(args.job_id).job
    refusal = download.refusal(job)
    if refusal is not None:
        render.err(f"error: {refusal}")
        return EXIT_DOWNLOAD_FAILED
    # One path per line on stdout, for scripts; what went wrong on stderr.
    _, failed = _save(conn, job, Path(args.output_dir), on_saved=lambda s: print(s.path))
    return EXIT_DOWNLOAD_FAILED if failed else EXIT_OK


def _save(
    conn: Connection,
    job: job_pb2.Job,
    directory: Path,
    *,
    on_saved: Callable[[download.Saved], None] = lambda saved: None,
) -> tuple[dict[int, Path], bool]:
    """Saves a succeeded job's outputs; the files by output index, and whether any failed."""
    saved = download.save_outputs(
        job,
        directory,
        timeout=conn.timeout,
        on_saved=on_saved,
        on_failed=lambda exc: render.err(f"error: {exc}"),
    )
    return {s.index: s.path for s in saved}, len(saved) < len(job.outputs)


def cmd_token(args: argparse.Namespace, conn: Connection) -> int:
    secret = signing_secret(args.secret_env)
    if len(secret) < 32:
        raise ConfigError(
            f"{args.secret_env} must hold the signing secret (at least 32 characters)"
        )
    if args.ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    settings = conn.settings
    print(
        mint_token(
            secret,
            args.subject,
            audience=settings.audience if args.audience is None else args.audience,
            issuer=settings.issuer if args.issuer is None else args.issuer,
            ttl_seconds=args.ttl,
        )
    )
    return EXIT_OK


# --- watching ------------------------------------------------------------------------------


def _follow(conn: Connection, job_id: str, *, as_json: bool, output_dir: str = "") -> int:
    """Watches the job to its end, prints it with download URLs (or, with `output_dir`, the files
    its outputs were saved to), and maps its status to an exit code."""
    addr = conn.require_notifier()
    tokens = conn.tokens()
    display = render.WatchDisplay(sys.stdout)

    def on_job(job: job_pb2.Job) -> None:
        if as_json:
            print(render.to_json(notifier_service_pb2.WatchJobResponse(job=job), compact=True))
            sys.stdout.flush()
        else:
            display.update(job)

    def on_reset(reason: str) -> None:
        display.end_line()
        render.err(f"watch: could not resume ({reason}); showing the job as it is now")

    with conn.channel(addr) as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        try:
            job = watch_job(
                stub,
                job_id,
                tokens,
                on_job,
                on_reconnect=lambda reason, delay: _reconnecting(display, reason, delay),
                on_reset=on_reset,
            )
        except KeyboardInterrupt:
            display.end_line()
            render.err(f"stopped watching; the job keeps going (resume: mediactl watch {job_id})")
            return EXIT_INTERRUPTED
        finally:
            display.end_line()

    final = _with_urls(conn, job)
    saved: dict[int, Path] = {}
    download_failed = False
    if output_dir and job.status == lifecycle.SUCCEEDED:

        def note(result: download.Saved) -> None:
            if as_json:  # stdout is for JSON; without it the job below shows the paths
                render.err(f"saved {result.path}")

        saved, download_failed = _save(conn, final, Path(output_dir), on_saved=note)
    if as_json:
        print(render.to_json(job_service_pb2.GetJobResponse(job=final), compact=True))
    else:
        print(render.render_job(final, saved))
    if job.status == lifecycle.SUCCEEDED:
        return EXIT_DOWNLOAD_FAILED if download_failed else EXIT_OK
    if job.status == lifecycle.FAILED:
        render.err(f"job failed: {render.job_error(job)}")
        return EXIT_JOB_FAILED
    render.err("job canceled")
    return EXIT_JOB_CANCELED


def _with_urls(conn: Connection, job: job_pb2.Job) -> job_pb2.Job:
    """Status events carry no presigned URLs (they would expire in the stream), so the finished
    job is read once from job_service, which mints them (unless the stream's last message came
    with them)."""
    if all(output.url for output in job.outputs):
        return job
    if not conn.job_addr:
        render.err("note: set JOB_SERVICE_ADDR (or --addr) to get download URLs")
        return job
    with conn.job_service() as jobs:
        try:
            response = jobs.get(job.id)
        except grpc.RpcError as exc:
            render.err("warning: could not read download URLs:", *describe_rpc_error(exc))
            return job
    return response.job


def _reconnecting(display: render.WatchDisplay | None, reason: str, delay: float) -> None:
    if display is not None:
        display.end_line()
    render.err(f"watch: stream interrupted ({reason}); reconnecting in {delay:.1f}s")


# --- the feed of every job ---------------------------------------------------------------------


class _TextFeed:
    """One line per job change, a line when the snapshot is done and one for a reset."""

    def job(self, response: notifier_service_pb2.WatchJobsResponse) -> None:
        print(render.feed_line(response.job), flush=True)

    def snapshot_done(self, response: notifier_service_pb2.WatchJobsResponse, jobs: int) -> None:
        print(f"-- snapshot done ({jobs} job{'' if jobs == 1 else 's'}); live changes follow")
        sys.stdout.flush()

    def reset(
        self,
        response: notifier_service_pb2.WatchJobsResponse,
        relisted: Sequence[job_pb2.Job] | None,
    ) -> None:
        reason = render.one_line(response.reset.reason) or "cursor too old"
        if relisted is None:
            print(f"-- reset ({reason}): changes were missed; `mediactl list` shows every job")
        else:
            print(f"-- reset ({reason}): listed the jobs again; {len(relisted)} changed meanwhile")
            for job in relisted:
                print(render.feed_line(job))
        sys.stdout.flush()

    def reconnecting(self, reason: str, delay: float) -> None:
        _reconnecting(None, reason, delay)


class _JsonFeed(_TextFeed):
    """Every response but heartbeats as one JSON line; jobs listed again after a reset as
    responses without a cursor."""

    def job(self, response: notifier_service_pb2.WatchJobsResponse) -> None:
        print(render.to_json(response, compact=True), flush=True)

    def snapshot_done(self, response: notifier_service_pb2.WatchJobsResponse, jobs: int) -> None:
        self.job(response)

    def reset(
        self,
        response: notifier_service_pb2.WatchJobsResponse,
        relisted: Sequence[job_pb2.Job] | None,
    ) -> None:
        self.job(response)
        for job in relisted or ():
            self.job(notifier_service_pb2.WatchJobsResponse(job=job))


def _feed(conn: Connection, *, kinds: list[int], statuses: list[int], as_json: bool) -> int:
    """`watch --all`: runs until Ctrl-C, which is its normal end (exit 0)."""
    addr = conn.require_notifier()
    tokens = conn.tokens()

    def relist() -> list[job_pb2.Job] | None:
        # ListJobs filters on one kind and one status; more are filtered by the feed itself.
        request = job_service_pb2.ListJobsRequest(
            page_size=100,
            kind=kinds[0] if len(kinds) == 1 else 0,  # type: ignore[arg-type]
            status=statuses[0] if len(statuses) == 1 else 0,  # type: ignore[arg-type]
        )
        try:
            with conn.job_service() as service:
                return list_pages(service.list, request, _jobs)[0]
        except grpc.RpcError as exc:
            render.err("watch: could not list the jobs again:", *describe_rpc_error(exc))
            return None

    with conn.channel(addr) as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        try:
            watch_feed(
                stub,
                tokens,
                _JsonFeed() if as_json else _TextFeed(),
                kinds=kinds,
                statuses=statuses,
                relist=relist if conn.job_addr else None,
            )
        except KeyboardInterrupt:
            sys.stdout.flush()
            return EXIT_OK
