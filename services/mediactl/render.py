"""Human-readable output: job details, the job table, the live watch display, and lines on stderr.

Everything except `WatchDisplay` and `err` is a pure function returning text, so it can be tested
as is.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from media.v1 import job_pb2, notifications_pb2, webhook_service_pb2
from services.common.lifecycle import FAILED, FINISHED_EVENT_TYPES, kind_name, status_name

BAR_WIDTH = 10


def err(*lines: str) -> None:
    """Notes, warnings and errors: on stderr, apart from the output a script reads."""
    for line in lines:
        print(line, file=sys.stderr)


def to_json(message: Message, *, compact: bool = False) -> str:
    # Fields at their default (progress 0, attempt 0) are printed too, so scripts can rely on them.
    return json_format.MessageToJson(
        message, indent=None if compact else 2, always_print_fields_with_no_presence=True
    )


def error_code_name(code: job_pb2.ErrorCode.ValueType) -> str:
    return job_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_")


def progress_bar(progress: int, width: int = BAR_WIDTH) -> str:
    """`[#####.....]` for 50; out-of-range values are clamped rather than trusted."""
    filled = max(0, min(width, progress * width // 100))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def progress_line(job: job_pb2.Job) -> str:
    """`[#####.....]  50% RUNNING generating frame 12/96`"""
    line = f"{progress_bar(job.progress)} {job.progress:>3}% {status_name(job.status)}"
    return f"{line} {one_line(job.status_message)}" if job.status_message else line


def status_line(job: job_pb2.Job) -> str:
    """One log line per status change, for output that is not a terminal."""
    line = f"{status_name(job.status):<9} {job.progress:>3}%"
    if job.attempt:
        line += f"  attempt {job.attempt}"
    if job.status_message:
        line += f"  {one_line(job.status_message)}"
    if job.status == FAILED:
        line += f"  ({job_error(job)})"
    return line


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed, so a line can be redrawn or grepped."""
    return " ".join(text.split())


def job_error(job: job_pb2.Job) -> str:
    return f"{error_code_name(job.error.code)}: {job.error.message}"


def human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def utc_time(value: Timestamp) -> str:
    """`2025-01-31 12:00:00Z`"""
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def timestamp(message: Message, field: str) -> str:
    """A Timestamp field as `2025-01-31 12:00:00Z`, or "" when it is not set."""
    if not message.HasField(field):
        return ""
    value: Timestamp = getattr(message, field)
    return utc_time(value)


def prompt_of(job: job_pb2.Job) -> str:
    which = job.WhichOneof("params")
    return getattr(job, which).prompt if which else ""


def render_output(output: job_pb2.Output, saved: Path | None = None) -> list[str]:
    """`saved`: the file the output was downloaded to, shown instead of its URL (which expires)."""
    facts = [output.content_type or "?", human_bytes(output.byte_size)]
    if output.width or output.height:
        facts.append(f"{output.width}x{output.height}")
    if output.duration_seconds:
        facts.append(f"{output.duration_seconds:.1f}s")
    lines = [f"  #{output.index}  " + ", ".join(facts)]
    if output.sha256:
        lines.append(f"      sha256   {output.sha256}")
    if saved is not None:
        lines.append(f"      saved    {saved}")
    elif output.url:
        lines.append(f"      url      {output.url}")
        expires = timestamp(output, "url_expire_time")
        if expires:
            lines.append(f"      expires  {expires}")
    else:
        lines.append(f"      stored   s3://{output.bucket}/{output.key}")
    return lines


def render_job(job: job_pb2.Job, saved: Mapping[int, Path] | None = None) -> str:
    """`saved`: downloaded files by output index (see render_output)."""
    rows: list[tuple[str, str]] = [
        ("job", job.id),
        ("kind", kind_name(job.kind)),
        ("status", status_name(job.status)),
        (
            "progress",
            f"{job.progress}%" + (f"  {job.status_message}" if job.status_message else ""),
        ),
        ("attempt", str(job.attempt)),
    ]
    if job.HasField("error") and (job.error.code or job.error.message):
        rows.append(("error", job_error(job)))
    if job.model:
        rows.append(("model", job.model))
    rows.append(("prompt", prompt_of(job)))
    if job.request_id:
        rows.append(("request", job.request_id))
    for label, field in (
        ("created", "create_time"),
        ("started", "start_time"),
        ("ended", "end_time"),
        ("updated", "update_time"),
    ):
        if value := timestamp(job, field):
            rows.append((label, value))
    if job.HasField("generation_time"):
        rows.append(("gen time", f"{job.generation_time.ToTimedelta().total_seconds():.2f}s"))
    lines = [f"{label + ':':<10} {value}" for label, value in rows]
    if job.outputs:
        lines.append(f"outputs:   {len(job.outputs)}")
        for output in sorted(job.outputs, key=lambda o: o.index):
            lines.extend(render_output(output, (saved or {}).get(output.index)))
    return "\n".join(lines)


def render_summary(job: job_pb2.Job) -> str:
    """One line: `<id>  image  QUEUED  0%`."""
    return f"{job.id}  {kind_name(job.kind)}  {status_name(job.status)}  {job.progress}%"


def feed_line(job: job_pb2.Job) -> str:
    """One job change in `watch --all`: `<id>  image  RUNNING    50%  generating`."""
    line = f"{job.id}  {kind_name(job.kind)}  {status_name(job.status):<9} {job.progress:>3}%"
    if job.status_message:
        line += f"  {one_line(job.status_message)}"
    if job.status == FAILED:
        line += f"  ({one_line(job_error(job))})"
    return line


def clip(text: str, width: int) -> str:
    text = one_line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns (the last one left ragged)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    )


def render_table(jobs: list[job_pb2.Job], *, prompt_width: int = 40) -> str:
    if not jobs:
        return "no jobs"
    rows: list[tuple[str, ...]] = [
        ("ID", "KIND", "STATUS", "PROGRESS", "CREATED", "OUTPUTS", "PROMPT")
    ]
    for job in jobs:
        rows.append(
            (
                job.id,
                kind_name(job.kind),
                status_name(job.status),
                f"{job.progress}%",
                timestamp(job, "create_time"),
                str(len(job.outputs)),
                clip(prompt_of(job), prompt_width),
            )
        )
    return columns(rows)


# --- webhooks and notifications ----------------------------------------------------------------


def endpoint_events(endpoint: webhook_service_pb2.WebhookEndpoint) -> str:
    return ",".join(endpoint.event_types or FINISHED_EVENT_TYPES)


def endpoint_kinds(endpoint: webhook_service_pb2.WebhookEndpoint) -> str:
    return ",".join(kind_name(kind) for kind in endpoint.kinds) or "all"


def render_endpoint(endpoint: webhook_service_pb2.WebhookEndpoint) -> str:
    rows = [
        ("endpoint", endpoint.id),
        ("url", endpoint.url),
        ("events", endpoint_events(endpoint)),
        ("kinds", endpoint_kinds(endpoint)),
    ]
    if endpoint.description:
        rows.append(("note", one_line(endpoint.description)))
    if endpoint.job_id:
        rows.append(("job", endpoint.job_id))
    if endpoint.enabled:
        rows.append(("enabled", "yes"))
    else:
        since = timestamp(endpoint, "disable_time")
        reason = one_line(endpoint.disabled_reason) or "disabled"
        rows.append(("enabled", f"no ({reason}{', since ' + since if since else ''})"))
    if created := timestamp(endpoint, "create_time"):
        rows.append(("created", created))
    if old_until := timestamp(endpoint, "previous_secret_expire_time"):
        rows.append(("old secret", f"still signs until {old_until}"))
    return "\n".join(f"{label + ':':<11} {value}" for label, value in rows)


def secret_lines(secret: str, label: str = "secret") -> list[str]:
    return [
        f"{label + ':':<11} {secret}",
        "the secret is shown only now: keep it where your receiver can read it",
    ]


def render_endpoints(endpoints: list[webhook_service_pb2.WebhookEndpoint]) -> str:
    if not endpoints:
        return "no webhook endpoints"
    rows: list[tuple[str, ...]] = [("ID", "STATE", "EVENTS", "KINDS", "URL", "NOTE")]
    for endpoint in endpoints:
        rows.append(
            (
                endpoint.id,
                "enabled" if endpoint.enabled else "disabled",
                endpoint_events(endpoint),
                endpoint_kinds(endpoint),
                endpoint.url,
                clip(endpoint.disabled_reason or endpoint.description, 40)
                if not endpoint.enabled or endpoint.description
                else "",
            )
        )
    return columns(rows)


def delivery_state_name(state: webhook_service_pb2.DeliveryState.ValueType) -> str:
    return webhook_service_pb2.DeliveryState.Name(state).removeprefix("DELIVERY_STATE_")


def render_attempt(attempt: webhook_service_pb2.WebhookAttempt) -> str:
    """`#2  2025-01-31 12:00:05Z  500  120 ms  <error or the response's start>  (manual)`"""
    answer = str(attempt.status_code) if attempt.status_code else "---"
    latency = round(attempt.latency.ToTimedelta().total_seconds() * 1000)
    line = f"#{attempt.number}  {timestamp(attempt, 'start_time')}  {answer}  {latency} ms"
    if detail := clip(attempt.error or attempt.response_head, 80):
        line += f"  {detail}"
    if attempt.manual:
        line += "  (manual)"
    return line


def render_delivery(delivery: webhook_service_pb2.WebhookDelivery) -> str:
    lines = [
        f"{delivery.id}  {delivery.event_type}  job {delivery.job_id} v{delivery.job_version}  "
        f"{delivery_state_name(delivery.state)}  created {timestamp(delivery, 'create_time')}"
    ]
    lines += [f"  {render_attempt(attempt)}" for attempt in delivery.attempts]
    if not delivery.attempts:
        lines.append("  no attempt yet")
    if next_at := timestamp(delivery, "next_attempt_time"):
        lines.append(f"  next attempt {next_at}")
    return "\n".join(lines)


def render_deliveries(deliveries: list[webhook_service_pb2.WebhookDelivery]) -> str:
    return "\n".join(render_delivery(d) for d in deliveries) if deliveries else "no deliveries"


def render_notifications(
    notifications: list[notifications_pb2.Notification], unread_count: int
) -> str:
    """Newest first as given; `*` marks the unread ones; the unread count last."""
    lines = []
    if notifications:
        rows: list[tuple[str, ...]] = [("", "ID", "CREATED", "JOB", "TITLE")]
        for note in notifications:
            title = one_line(note.title)
            if note.message:
                title += f": {one_line(note.message)}"
            rows.append(
                ("" if note.read else "*", note.id, timestamp(note, "create_time"), note.job_id,
                 title)
            )  # fmt: skip
        lines.append(columns(rows))
    else:
        lines.append("no notifications")
    lines.append(f"{unread_count} unread")
    return "\n".join(lines)


class WatchDisplay:
    """Shows a watched job as it changes.

    On a terminal: a progress bar redrawn in place with \\r; a status change keeps the previous
    line, so QUEUED -> RUNNING -> SUCCEEDED stays visible. Elsewhere (logs, CI): one line per status
    change, no control characters.
    """

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._last: job_pb2.Job | None = None
        self._open_line = False  # a redrawable line is on screen without its newline

    def update(self, job: job_pb2.Job) -> None:
        last, self._last = self._last, job
        changed = last is None or last.status != job.status or last.attempt != job.attempt
        if not self._tty:
            if changed:
                self._out.write(status_line(job) + "\n")
                self._out.flush()
            return
        if changed and self._open_line:
            self._out.write("\n")
        # Truncated to the terminal width: a wrapped line cannot be redrawn with \r.
        columns = max(20, shutil.get_terminal_size().columns - 1)
        self._out.write("\r" + progress_line(job)[:columns] + "\x1b[K")
        self._out.flush()
        self._open_line = True

    def end_line(self) -> None:
        """Ends the redrawn line so that what follows starts on a fresh one."""
        if self._open_line:
            self._out.write("\n")
            self._out.flush()
            self._open_line = False


def webhook_event_lines(
    when: str, event_type: str, webhook_id: str, job: job_pb2.Job | None
) -> list[str]:
    """One received webhook (`webhooks listen`):
    `2025-01-31 12:00:00Z  job.succeeded  <job id>  SUCCEEDED  v4  [<webhook-id>]`, then the
    URL of each output of a finished job."""
    if job is None:
        return [f"{when}  {event_type}  (its data is not a job)  [{webhook_id}]"]
    line = f"{when}  {event_type:<13}  {job.id}  {status_name(job.status):<9}  v{job.version}"
    if job.status == FAILED:
        line += f"  ({one_line(job_error(job))})"
    lines = [f"{line}  [{webhook_id}]"]
    for output in sorted(job.outputs, key=lambda o: o.index):
        lines.append(f"  #{output.index}  {output.url or f's3://{output.bucket}/{output.key}'}")
    return lines
