"""Structured JSON logs, one object a line, with the job ID wherever a line is about a job and
the trace and span IDs on every line written inside a span.

A line gets its job_id from `extra={"job_id": ...}` or, failing that, from the job bound to the
current context (`bind_job_id` / `job_context`: the server interceptor binds the request's job_id,
the worker binds the job it runs), so lines from shared code (retries, uploads) carry it too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from services.common import tracing

_RESERVED = set(vars(logging.makeLogRecord({})))
_job_id: ContextVar[str] = ContextVar("job_id", default="")


def bind_job_id(job_id: str) -> Token[str] | None:
    """Binds `job_id` to the current context (a no-op for ""); undo with unbind_job_id."""
    return _job_id.set(str(job_id)) if job_id else None


def unbind_job_id(token: Token[str] | None) -> None:
    if token is not None:
        try:
            _job_id.reset(token)
        except ValueError:  # bound in another context (a generator closed elsewhere): harmless
            pass


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = bind_job_id(job_id)
    try:
        yield
    finally:
        unbind_job_id(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if "job_id" not in line:
            bound = _job_id.get()
            if bound:
                line["job_id"] = bound
        ids = tracing.ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(service: str, level: str) -> None:
    """JSON lines on stderr at `level` (LogSettings.level, i.e. LOG_LEVEL)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty libraries stay at warning unless asked.
    for name in (
        "botocore",
        "boto3",
        "urllib3",
        "nats",
        "alembic",
        "httpx",
        "httpx2",
        "google_genai",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
