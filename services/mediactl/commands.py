"""What each mediactl command does once its arguments are parsed: one handler per command, which
returns the exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import cast

import grpc

from media.v1 import job_pb2, job_service_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from services.common import lifecycle
from services.common.auth import mint_token
from services.mediactl import build, render
from services.mediactl.client import ConfigError, Connection, JobService, describe_rpc_error
from services.mediactl.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_JOB_CANCELED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_RPC_ERROR,
)
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
    with conn.job_service() as jobs:
        if args.watch:
            conn.require_notifier()  # before creating, not after
        request = build.create_request(args)
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
    if not args.watch:
        return EXIT_OK
    return _follow(conn, job.id, as_json=args.json)


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


def cmd_list(args: argparse.Namespace, conn: Connection) -> int:
    request = build.list_request(args)
    jobs: list[job_pb2.Job] = []
    with conn.job_service() as service:
        seen_tokens: set[str] = set()
        while True:
            response = service.list(request)
            jobs.extend(response.jobs)
            token = response.next_page_token
            # A token seen before would loop forever; stop rather than trust it.
            if not args.all or not token or token in seen_tokens:
                break
            seen_tokens.add(token)
            request.page_token = token
    next_token = "" if args.all else response.next_page_token
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
    return _follow(conn, args.job_id, as_json=args.json)


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


def _follow(conn: Connection, job_id: str, *, as_json: bool) -> int:
    """Watches the job to its end, prints it with download URLs, and maps its status to an exit
    code."""
    addr = conn.require_notifier()
    metadata = conn.metadata()
    display = render.WatchDisplay(sys.stdout)

    def on_job(job: job_pb2.Job) -> None:
        if as_json:
            print(render.to_json(notifier_service_pb2.WatchJobResponse(job=job), compact=True))
            sys.stdout.flush()
        else:
            display.update(job)

    def on_reconnect(reason: str, delay: float) -> None:
        display.end_line()
        render.err(f"watch: stream interrupted ({reason}); reconnecting in {delay:.1f}s")

    with conn.channel(addr) as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        try:
            job = watch_job(stub, job_id, metadata, on_job, on_reconnect=on_reconnect)
        except KeyboardInterrupt:
            display.end_line()
            render.err(f"stopped watching; the job keeps going (resume: mediactl watch {job_id})")
            return EXIT_INTERRUPTED
        finally:
            display.end_line()

    final = _with_urls(conn, job)
    if as_json:
        print(render.to_json(job_service_pb2.GetJobResponse(job=final), compact=True))
    else:
        print(render.render_job(final))
    if job.status == lifecycle.SUCCEEDED:
        return EXIT_OK
    if job.status == lifecycle.FAILED:
        render.err(f"job failed: {render.job_error(job)}")
        return EXIT_JOB_FAILED
    render.err("job canceled")
    return EXIT_JOB_CANCELED


def _with_urls(conn: Connection, job: job_pb2.Job) -> job_pb2.Job:
    """Status events carry no presigned URLs (they would expire in the stream), so the finished
    job is read once from job_service, which mints them."""
    if not job.outputs:
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
