"""mediactl's command line: the argparse parser, with the handler each command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn

from services.common import lifecycle
from services.mediactl import build, listen
from services.mediactl.commands import (
    Handler,
    cmd_cancel,
    cmd_create,
    cmd_download,
    cmd_get,
    cmd_list,
    cmd_token,
    cmd_watch,
)
from services.mediactl.exit_codes import EXIT_USAGE
from services.mediactl.notification_commands import cmd_notifications, cmd_notifications_read
from services.mediactl.settings import SECRET_ENV, WEBHOOK_SECRET_ENV
from services.mediactl.webhook_commands import (
    cmd_webhooks_add,
    cmd_webhooks_deliveries,
    cmd_webhooks_list,
    cmd_webhooks_listen,
    cmd_webhooks_redeliver,
    cmd_webhooks_rm,
    cmd_webhooks_rotate,
    cmd_webhooks_update,
)

DEFAULT_TIMEOUT_SECONDS = 30.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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


def _add_choices(
    parser: argparse.ArgumentParser,
    flag: str,
    dest: str,
    choices: Mapping[str, int],
    help_text: str,
) -> None:
    """A repeatable choice: the enum numbers of every value given (none: no filter)."""
    parser.add_argument(
        flag,
        type=_choice(choices),
        action="append",
        default=[],
        dest=dest,
        metavar="|".join(choices),
        help=help_text,
    )


def _comma_list(choices: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse type: `a,b` -> ["a", "b"], each one of `choices`."""

    def parse(text: str) -> list[str]:
        try:
            return build.comma_list(text, choices, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_webhook_filters(parser: argparse.ArgumentParser, *, update: bool = False) -> None:
    """--events and --kinds: comma-separated, repeatable; left off: None (unchanged on update)."""
    events_default = "leave as is" if update else ", ".join(lifecycle.FINISHED_EVENT_TYPES)
    parser.add_argument(
        "--events",
        type=_comma_list(lifecycle.EVENT_TYPES, "an event type"),
        action="extend",
        default=None,
        metavar="TYPE,...",
        help=f"event types to send, of {', '.join(lifecycle.EVENT_TYPES)} "
        f"(default: {events_default})",
    )
    parser.add_argument(
        "--kinds",
        type=_comma_list(lifecycle.KINDS, "a kind"),
        action="extend",
        default=None,
        metavar="KIND,...",
        help=f"only jobs of these kinds, of {', '.join(lifecycle.KINDS)} "
        + ("('' for all; default: leave as is)" if update else "(default: all)"),
    )
    parser.add_argument("--description", default=None, help="a note of up to 500 characters")


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
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="a file holding the bearer JWT, read again when a watch's token expires "
        "(env MEDIA_TOKEN_FILE)",
    )
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

    def output_dir_flag(p: argparse.ArgumentParser, help_text: str) -> None:
        p.add_argument("-o", "--output-dir", default="", metavar="DIR", help=help_text)

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
        p.add_argument(
            "--webhook",
            default="",
            metavar="URL",
            help="also POST this job's changes to URL, signed with a secret of its own (printed)",
        )
        p.add_argument(
            "--webhook-events",
            type=_comma_list(lifecycle.EVENT_TYPES, "an event type"),
            action="extend",
            default=None,
            metavar="TYPE,...",
            help="(--webhook) event types to send (default: "
            f"{', '.join(lifecycle.FINISHED_EVENT_TYPES)})",
        )
        p.add_argument("--watch", action="store_true", help="then watch the job to its end")
        output_dir_flag(p, "(--watch) once it SUCCEEDED, save its outputs into DIR")
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
        commands,
        "watch",
        cmd_watch,
        "follow a job live (exit 0 SUCCEEDED, 1 FAILED, 2 CANCELED), or with --all every change "
        "to your jobs until Ctrl-C",
    )
    watch.add_argument("job_id", metavar="JOB_ID", nargs="?", default="")
    watch.add_argument("--all", action="store_true", help="the live feed of all your jobs")
    _add_choices(watch, "--kind", "kinds", build.KINDS, "(--all) only these kinds; repeatable")
    _add_choices(
        watch, "--status", "statuses", build.STATUSES, "(--all) only changes into these; repeatable"
    )
    watch.add_argument("--json", action="store_true", help="print each update as one JSON line")
    output_dir_flag(watch, "(JOB_ID) once it SUCCEEDED, save its outputs into DIR")

    download = command(
        commands,
        "download",
        cmd_download,
        "save a succeeded job's outputs as JOB_ID-INDEX.EXT, each checked against its sha256",
    )
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument(
        "-o", "--output-dir", default=".", metavar="DIR", help="where (default: here)"
    )

    cancel = command(commands, "cancel", cmd_cancel, "cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    json_flag(cancel)

    webhooks = commands.add_parser(
        "webhooks",
        parents=[common],
        help="manage the endpoints your jobs' changes are POSTed to, and receive them locally",
        description="webhook endpoints: URLs that get every change of your jobs, signed",
    )
    hooks = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")

    add = command(hooks, "add", cmd_webhooks_add, "register an endpoint (prints its secret once)")
    add.add_argument("url", metavar="URL")
    _add_webhook_filters(add)
    json_flag(add)

    list_hooks = command(hooks, "list", cmd_webhooks_list, "list your endpoints, newest first")
    json_flag(list_hooks)

    update = command(hooks, "update", cmd_webhooks_update, "change an endpoint")
    update.add_argument("endpoint_id", metavar="ID")
    update.add_argument("--url", default=None)
    _add_webhook_filters(update, update=True)
    enabled = update.add_mutually_exclusive_group()
    enabled.add_argument(
        "--enable", dest="enabled", action="store_const", const=True, default=None,
        help="enable it (again, after it was disabled)",
    )  # fmt: skip
    enabled.add_argument(
        "--disable", dest="enabled", action="store_const", const=False, help="send it nothing"
    )
    json_flag(update)

    rm = command(hooks, "rm", cmd_webhooks_rm, "delete an endpoint and its delivery history")
    rm.add_argument("endpoint_id", metavar="ID")

    rotate = command(
        hooks,
        "rotate",
        cmd_webhooks_rotate,
        "a new signing secret (prints it once); the old one keeps signing for a while",
    )
    rotate.add_argument("endpoint_id", metavar="ID")
    json_flag(rotate)

    deliveries = command(
        hooks, "deliveries", cmd_webhooks_deliveries, "an endpoint's deliveries and attempts"
    )
    deliveries.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    _add_choice(deliveries, "--state", build.DELIVERY_STATES)
    deliveries.add_argument("--page-size", type=int, default=0, help="1-100 (default 20)")
    deliveries.add_argument("--page-token", default="", help="from the previous page")
    json_flag(deliveries)

    redeliver = command(hooks, "redeliver", cmd_webhooks_redeliver, "send a delivery again now")
    redeliver.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    redeliver.add_argument("delivery_id", metavar="DELIVERY_ID")
    json_flag(redeliver)

    listen_ = command(
        hooks,
        "listen",
        cmd_webhooks_listen,
        "receive webhooks on a local port: check each signature, print one line per event "
        "(until Ctrl-C)",
    )
    listen_.add_argument(
        "--port", type=int, required=True, help="the port to listen on (0: any free one)"
    )
    listen_.add_argument("--host", default=listen.DEFAULT_HOST, help="(default %(default)s)")
    listen_.add_argument(
        "--secret",
        default=None,
        metavar="whsec_...",
        help=f"the endpoint's signing secret (env {WEBHOOK_SECRET_ENV}, which keeps it out of "
        "`ps` and the shell's history)",
    )
    listen_.add_argument("--json", action="store_true", help="print each event as one JSON line")

    notifications = command(
        commands,
        "notifications",
        cmd_notifications,
        "your notifications (one per finished job), newest first; `read` marks them read",
    )
    notifications.add_argument("--unread", action="store_true", help="only unread ones")
    notifications.add_argument("--page-size", type=int, default=0, help="1-100 (default 20)")
    notifications.add_argument("--page-token", default="", help="from the previous page")
    json_flag(notifications)
    inbox = notifications.add_subparsers(
        dest="notifications_command", metavar="[read]", parser_class=_Parser
    )
    read = command(inbox, "read", cmd_notifications_read, "mark notifications read")
    read.add_argument("notification_ids", metavar="ID", nargs="*")
    read.add_argument("--all", action="store_true", help="every notification")
    json_flag(read)

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
