"""mediactl: create, inspect, list, watch, download and cancel media jobs from a shell; manage
webhook endpoints (and receive them locally) and read the notification inbox.

`main(argv)` returns the exit code (the console script passes it to sys.exit):
0 success (for a watch: the job SUCCEEDED), 1 the job FAILED, 2 the job was CANCELED,
3 a gRPC error (or a watch that could not follow the job to its end), 4 a download that failed or
did not match its sha256 (or a job with nothing to download), 64 bad usage or a missing setting,
130 interrupted (`watch --all` and `webhooks listen` run until interrupted, so Ctrl-C ends them
with 0).
"""

from __future__ import annotations

import grpc

from services.common.config import SettingsError
from services.mediactl import build, render
from services.mediactl.client import ConfigError, Connection, describe_rpc_error
from services.mediactl.commands import Handler
from services.mediactl.exit_codes import EXIT_INTERRUPTED, EXIT_RPC_ERROR, EXIT_USAGE
from services.mediactl.parser import DEFAULT_TIMEOUT_SECONDS, build_parser
from services.mediactl.settings import TOKEN_ENV, TOKEN_FILE_ENV, CliSettings
from services.mediactl.tokens import is_token_expired
from services.mediactl.watch import WatchError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error from parser._Parser.error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = CliSettings.from_env()
    except SettingsError as exc:
        render.err(f"error: {exc}")
        return EXIT_USAGE
    conn = Connection.resolve(
        settings,
        addr=getattr(args, "addr", None),
        notifier_addr=getattr(args, "notifier_addr", None),
        token=getattr(args, "token", None),
        token_file=getattr(args, "token_file", None),
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT_SECONDS),
        tls=getattr(args, "tls", False),
    )
    handler: Handler = args.handler
    try:
        return handler(args, conn)
    except (ConfigError, build.InputError) as exc:
        render.err(f"error: {exc}")
        return EXIT_USAGE
    except WatchError as exc:
        render.err(f"error: {exc}")
        return EXIT_RPC_ERROR
    except grpc.RpcError as exc:
        render.err(*describe_rpc_error(exc))
        if is_token_expired(exc):
            render.err(
                f"a fresh token is needed ({TOKEN_ENV}, --token); a watch given a token file "
                f"({TOKEN_FILE_ENV}, --token-file) reads it again when its token expires"
            )
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
