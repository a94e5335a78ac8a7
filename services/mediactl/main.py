"""mediactl: create, inspect, list, watch and cancel media jobs from a shell.

`main(argv)` returns the exit code (the console script passes it to sys.exit):
0 success (for a watch: the job SUCCEEDED), 1 the job FAILED, 2 the job was CANCELED,
3 a gRPC error (or a watch that could not follow the job to its end), 64 bad usage or a missing
setting, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn, cast

import grpc

from media.v1 import (
    job_pb2,
    job_service_pb2,
    notifier_service_pb2,
    notifier_service_pb2_grpc,
)
from services.common import lifecycle
from services.common.auth import mint_token
from services.common.config import SettingsError
from services.mediactl import build, render
from services.mediactl.client import ConfigError, Connection, JobService, describe_rpc_error
from services.mediactl.settings import SECRET_ENV, CliSettings, signing_secret
from services.mediactl.watch import WatchError, watch_job

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_JOB_CANCELED = 2
EXIT_RPC_ERROR = 3
EXIT_USAGE = 64  # sysexits EX_USAGE; argparse's own 2 would read as CANCELED
EXIT_INTERRUPTED = 130

DEFAULT_TIMEOUT_SECONDS = 30.0
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _err(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _choice(choices: Mapping[str, int]) -> Callable[[str], int]:
    """An argparse type: the enum number of any spelling build.normalize_choice accepts (the flag
    left off gives 0, UNSPECIFIED: the server's default)."""

    def parse(text: str) -> int:
        key = text if text in choices else build.normalize_choice(text)
        if key not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return choices[key]

    return parse


def _add_choice(parser: argparse.ArgumentParser, flag: str, choices: Mapping[str, int]) -> None:
    parser.add_argument(flag, type=_choice(choices), default=0, metavar="|".join(choices))


# --- commands ------------------------------------------------------------------------------


def create_request(args: argparse.Namespace) -> job_service_pb2.CreateJobRequest:
    """The CreateJobRequest that `create image|video` arguments describe. Limits (counts, sizes,
    durations) are left to job_service, the one place that checks them."""
    params: job_pb2.ImageParams | job_pb2.VideoParams
    if args.kind == "image":
        request = job_service_pb2.CreateJobRequest(
            image=job_pb2.ImageParams(
                size=args.size,
                format=args.format,
                number_of_images=args.count,
                style=args.style,
                quality=args.quality,
            )
        )
        params = request.image
    else:
        request = job_service_pb2.CreateJobRequest(
            video=job_pb2.VideoParams(
                negative_prompt=args.negative_prompt,
                aspect_ratio=args.aspect_ratio,
                duration_seconds=args.duration,
                number_of_videos=args.count,
                person_generation=args.person_generation,
            )
        )
        params = request.video
    # What both kinds share.
    request.request_id = args.request_id or build.new_request_id()
    params.prompt = args.prompt
    params.model = args.model
    if args.input_image:
        params.input_image.CopyFrom(build.read_input_image(args.input_image))
    return request


def list_request(args: argparse.Namespace) -> job_service_pb2.ListJobsRequest:
    return job_service_pb2.ListJobsRequest(
        page_size=args.page_size, page_token=args.page_token, kind=args.kind, status=args.status
    )


def cmd_create(args: argparse.Namespace, conn: Connection) -> int:
    with conn.job_service() as jobs:
        if args.watch:
            conn.require_notifier()  # before creating, not after
        request = create_request(args)
        try:
            response = jobs.create(request)
        except grpc.RpcError as exc:
            _err(*describe_rpc_error(exc))
            if cast(grpc.Call, exc).code() in _AMBIGUOUS_CODES:
                _err(
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
    request = list_request(args)
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
        _err(f"watch: stream interrupted ({reason}); reconnecting in {delay:.1f}s")

    with conn.channel(addr) as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        try:
            job = watch_job(stub, job_id, metadata, on_job, on_reconnect=on_reconnect)
        except KeyboardInterrupt:
            display.end_line()
            _err(f"stopped watching; the job keeps going (resume: mediactl watch {job_id})")
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
        _err(f"job failed: {render.job_error(job)}")
        return EXIT_JOB_FAILED
    _err("job canceled")
    return EXIT_JOB_CANCELED


def _with_urls(conn: Connection, job: job_pb2.Job) -> job_pb2.Job:
    """Status events carry no presigned URLs (they would expire in the stream), so the finished
    job is read once from job_service, which mints them."""
    if not job.outputs:
        return job
    if not conn.job_addr:
        _err("note: set JOB_SERVICE_ADDR (or --addr) to get download URLs")
        return job
    with conn.job_service() as jobs:
        try:
            response = jobs.get(job.id)
        except grpc.RpcError as exc:
            _err("warning: could not read download URLs:", *describe_rpc_error(exc))
            return job
    return response.job


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Connection options are accepted before or after the command; SUPPRESS keeps a subcommand
    # from overwriting a value given before it.
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--addr", default=argparse.SUPPRESS, help="job service host:port (env JOB_SERVICE_ADDR)"
    )
    group.add_argument(
        "--notifier-addr", default=argparse.SUPPRESS, help="notifier host:port (env NOTIFIER_ADDR)"
    )
    group.add_argument("--token", default=argparse.SUPPRESS, help="bearer JWT (env MEDIA_TOKEN)")
    group.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"deadline of each unary call in seconds (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help="connect with TLS (env TLS_ENABLED; TLS_CA_FILE, TLS_CLIENT_CERT_FILE and "
        "TLS_CLIENT_KEY_FILE choose the roots and the client certificate)",
    )

    parser = _Parser(
        prog="mediactl", description="Create and follow image and video jobs.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        sub: argparse._SubParsersAction[_Parser], name: str, handler: Handler, help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print the response as JSON")

    create = commands.add_parser(
        "create", parents=[common], help="create an image or video job", description="create a job"
    )
    kinds = create.add_subparsers(dest="kind", required=True, metavar="KIND")

    image = command(kinds, "image", cmd_create, "create an image job")
    image.add_argument("--prompt", required=True)
    image.add_argument("--size", default="", help="WIDTHxHEIGHT (server default 1024x1024)")
    _add_choice(image, "--format", build.IMAGE_FORMATS)
    image.add_argument("--count", type=int, default=0, help="number of images, 1-4 (default 1)")
    _add_choice(image, "--style", build.IMAGE_STYLES)
    _add_choice(image, "--quality", build.IMAGE_QUALITIES)

    video = command(kinds, "video", cmd_create, "create a video job")
    video.add_argument("--prompt", required=True)
    video.add_argument("--negative-prompt", default="")
    _add_choice(video, "--aspect-ratio", build.ASPECT_RATIOS)
    video.add_argument("--duration", type=int, default=0, help="seconds, 4-8 (default 8)")
    video.add_argument("--count", type=int, default=0, help="number of videos, 1-4 (default 1)")
    _add_choice(video, "--person-generation", build.PERSON_GENERATIONS)

    for p in (image, video):
        p.add_argument("--model", default="", help="model name (default: the worker's)")
        p.add_argument(
            "--input-image", metavar="FILE", help="a PNG, JPEG or WEBP image to start from"
        )
        p.add_argument(
            "--request-id",
            default="",
            help="idempotency key; reuse it to retry without a second job (default: random)",
        )
        p.add_argument("--watch", action="store_true", help="then watch the job to its end")
        json_flag(p)

    get = command(commands, "get", cmd_get, "show a job and its outputs")
    get.add_argument("job_id", metavar="JOB_ID")
    json_flag(get)

    list_ = command(commands, "list", cmd_list, "list your jobs, newest first")
    list_.add_argument("--page-size", type=int, default=0, help="1-100 (default 20)")
    list_.add_argument("--page-token", default="", help="from the previous page")
    list_.add_argument("--all", action="store_true", help="follow page tokens to the last page")
    _add_choice(list_, "--kind", build.KINDS)
    _add_choice(list_, "--status", build.STATUSES)
    json_flag(list_)

    watch = command(
        commands, "watch", cmd_watch, "follow a job live; exit 0 SUCCEEDED, 1 FAILED, 2 CANCELED"
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--json", action="store_true", help="print each state as one JSON line")

    cancel = command(commands, "cancel", cmd_cancel, "cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    json_flag(cancel)

    token = command(commands, "token", cmd_token, "mint a bearer token for local use")
    token.add_argument(
        "--secret-env",
        default=SECRET_ENV,
        metavar="VAR",
        help=f"environment variable holding the HS256 secret (default {SECRET_ENV})",
    )
    token.add_argument("--subject", required=True, help="the user the token names")
    token.add_argument(
        "--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default 1 day)"
    )
    # Left off: the settings' values (the environment is read in one place, mediactl.settings).
    token.add_argument("--audience", help="(env AUTH_AUDIENCE, default media)")
    token.add_argument("--issuer", help="(env AUTH_ISSUER)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error from _Parser.error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = CliSettings.from_env()
    except SettingsError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    conn = Connection.resolve(
        settings,
        addr=getattr(args, "addr", None),
        notifier_addr=getattr(args, "notifier_addr", None),
        token=getattr(args, "token", None),
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT_SECONDS),
        tls=getattr(args, "tls", False),
    )
    handler: Handler = args.handler
    try:
        return handler(args, conn)
    except (ConfigError, build.InputError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except WatchError as exc:
        _err(f"error: {exc}")
        return EXIT_RPC_ERROR
    except grpc.RpcError as exc:
        _err(*describe_rpc_error(exc))
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
