"""Turning google-genai failures into GenerationErrors, retrying the transient ones.

429 and 5xx answers, timeouts and connection failures are retried here with exponential backoff
and jitter (honouring the API's RetryInfo hint); when they persist, the error is retryable so the
worker hands the job back to JetStream. Every message is scrubbed of credentials first, and
messages built from a library's exception text (connection errors, credential files, validation
reports) say what failed in fixed words instead: that text names endpoints, hosts and paths, and
goes to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import google.auth.exceptions
import pydantic
from google.genai import errors as genai_errors

from media.v1 import job_pb2
from services.common.backoff import backoff_delay
from services.media_worker.generators.base import GenerationError

log = logging.getLogger(__name__)

T = TypeVar("T")
ErrorCode = job_pb2.ErrorCode

MAX_MESSAGE_CHARS = 500
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_SAFETY_WORDS = ("responsible ai", "usage guidelines", "safety", "sensitive words", "prohibited")
# Google API keys, ?key= query parameters and bearer tokens, wherever they might be echoed.
_SECRET_PATTERNS = (
    re.compile(r"AIza[0-9A-Za-z_\-]{35}"),
    re.compile(r"(?i)([?&]key=)[^&\s\"']+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+"),
)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures and timeouts of whichever HTTP client the SDK uses."""
    found: list[type[BaseException]] = [TimeoutError, ConnectionError]
    for module_name in ("httpx2", "httpx", "aiohttp"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for attr in ("TransportError", "TimeoutException", "ClientConnectionError"):
            cls = getattr(module, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


class Scrubber:
    """Removes the configured secrets (and anything shaped like one) from text."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str, *, limit: int | None = MAX_MESSAGE_CHARS) -> str:
        """The text without secrets, cut to `limit` characters (job messages stay short)."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
        if limit is not None and len(text) > limit:
            text = text[: limit - 3] + "..."
        return text


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    base_delay_seconds: float
    max_delay_seconds: float

    def delay(self, retry_index: int, hint: float | None = None) -> float:
        """The shared backoff (retry_index counts from 0, its attempts from 1); never shorter
        than the server's hint."""
        delay = backoff_delay(retry_index + 1, self.base_delay_seconds, self.max_delay_seconds)
        if hint is not None:
            delay = max(delay, min(hint, self.max_delay_seconds))
        return delay


def api_message(exc: genai_errors.APIError) -> str:
    """The API's own message, else the status text."""
    return str(exc.message or exc.status or f"HTTP {exc.code}")


def _error_details(exc: genai_errors.APIError) -> list[dict[str, object]]:
    details = exc.details if isinstance(exc.details, dict) else {}
    error = details.get("error", details)
    found = error.get("details") if isinstance(error, dict) else None
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


def retry_hint_seconds(exc: BaseException) -> float | None:
    """google.rpc.RetryInfo.retryDelay ("37s", "0.5s") of a 429, if the API sent one."""
    if not isinstance(exc, genai_errors.APIError):
        return None
    for detail in _error_details(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            raw = str(detail.get("retryDelay", "")).removesuffix("s")
            try:
                return max(0.0, float(raw))
            except ValueError:
                return None
    return None


def looks_like_safety(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _SAFETY_WORDS)


def classify(exc: BaseException, scrub: Scrubber, what: str) -> GenerationError | None:
    """The GenerationError a failure of `what` maps to; None for an unexpected bug."""
    if isinstance(exc, GenerationError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        message = scrub(f"{what} failed with HTTP {code}: {api_message(exc)}")
        reasons = {str(d.get("reason", "")) for d in _error_details(exc)}
        if code == 429:
            return GenerationError(ErrorCode.ERROR_CODE_RATE_LIMITED, message, retryable=True)
        if code in _RETRYABLE_STATUS or code >= 500:
            return GenerationError(
                ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE, message, retryable=True
            )
        if code in (401, 403) or "API_KEY_INVALID" in reasons:
            return GenerationError(
                ErrorCode.ERROR_CODE_CONFIGURATION,
                message + " (check the worker's Google credentials)",
            )
        if code == 400 and looks_like_safety(api_message(exc)):
            return GenerationError(ErrorCode.ERROR_CODE_SAFETY_BLOCKED, message)
        return GenerationError(ErrorCode.ERROR_CODE_INVALID_REQUEST, message)
    if isinstance(exc, TRANSPORT_ERRORS):
        _log_detail(what, exc, scrub)
        return GenerationError(
            ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE,
            f"{what} failed: {type(exc).__name__} (the Google API could not be reached)",
            retryable=True,
        )
    if isinstance(
        exc, json.JSONDecodeError | genai_errors.UnknownApiResponseError | pydantic.ValidationError
    ):
        _log_detail(what, exc, scrub)
        return GenerationError(
            ErrorCode.ERROR_CODE_NO_MEDIA, f"{what} returned a malformed response"
        )
    if isinstance(exc, google.auth.exceptions.TransportError):  # token endpoint unreachable
        _log_detail(what, exc, scrub)
        return GenerationError(
            ErrorCode.ERROR_CODE_UPSTREAM_UNAVAILABLE,
            f"{what}: fetching a Google Cloud access token failed",
            retryable=True,
        )
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        _log_detail(what, exc, scrub)
        return GenerationError(
            ErrorCode.ERROR_CODE_CONFIGURATION,
            "the worker's Google Cloud credentials are not usable",
        )
    if isinstance(exc, ValueError):
        # The SDK validates arguments client-side (e.g. a model name it cannot route).
        return GenerationError(ErrorCode.ERROR_CODE_INVALID_REQUEST, scrub(f"{what}: {exc}"))
    return None


def _log_detail(what: str, exc: BaseException, scrub: Scrubber) -> None:
    """The exception's own text, which the job's message leaves out, for the operator."""
    log.warning("%s: %s: %s", what, type(exc).__name__, scrub(str(exc), limit=None))


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    scrub: Scrubber,
    what: str,
) -> T:
    """Runs `call`, retrying transient failures; raises a GenerationError for every failure
    it understands (the API error itself is not chained: its text is already in the message)."""
    retry_index = 0
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = classify(exc, scrub, what)
            if error is None:
                raise
            if not error.retryable or retry_index + 1 >= policy.attempts:
                if error is exc:
                    raise
                raise error from None
            delay = policy.delay(retry_index, retry_hint_seconds(exc))
            retry_index += 1
            log.warning(
                "%s; retry %d of %d in %.2f s",
                error.message,
                retry_index,
                policy.attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
