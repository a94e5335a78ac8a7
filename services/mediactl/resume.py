"""A notifier stream that picks up where it broke: the reconnect loop `watch JOB` and
`watch --all` share.

Every response carries a cursor; after UNAVAILABLE (a restart, a load balancer, max connection
age) or a stream that simply ends, the call is made again with the last cursor, so the server
sends what came after it and nothing twice. When the token expires and the token source has a
fresh one, the call is made again at once with it; otherwise the error is the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

import grpc

from services.common.backoff import backoff_delay
from services.mediactl.tokens import TokenError, TokenSource, is_token_expired, metadata_of

# A connection that broke or never came up: the same call may be made again.
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

Metadata = tuple[tuple[str, str], ...]


class WatchError(Exception):
    """The watch could not go on (the stream kept breaking, or the token expired for good)."""


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 0.25
    max_seconds: float = 5.0
    # Consecutive broken connections that brought no news; None: never give up (a feed runs
    # until it is interrupted).
    max_failures: int | None = 6
    healthy_after_seconds: float = 30.0  # a stream that lived this long was not a failure

    def delay(self, failures: int) -> float:
        # Jittered, so that many watchers cut off together do not reconnect together.
        return backoff_delay(failures, self.initial_seconds, self.max_seconds)


DEFAULT_BACKOFF = Backoff()


class _Cursored(Protocol):
    @property
    def cursor(self) -> str: ...


R = TypeVar("R", bound=_Cursored)
R_co = TypeVar("R_co", covariant=True)


class StreamCall(Protocol[R_co]):
    """What a server-streaming call of a sync stub returns."""

    def __iter__(self) -> Iterator[R_co]: ...

    def cancel(self) -> bool: ...


# Opens the stream after `cursor` ("": from the start) with these call metadata.
Opener = Callable[[str, Metadata], StreamCall[R]]


def _no_report(reason: str, delay: float) -> None:
    pass


class ResumableStream(Generic[R]):
    """Iterating gives every response of every stream opened in turn; the caller stops when it
    has what it wanted (a generator's `close()` cancels the open call) and calls `progressed()`
    whenever a response was news, which proves the connection works."""

    def __init__(
        self,
        open_stream: Opener[R],
        tokens: TokenSource,
        *,
        cursor: str = "",
        ended: str = "the stream ended",  # the reason given when a stream ends without an error
        backoff: Backoff = DEFAULT_BACKOFF,
        on_reconnect: Callable[[str, float], None] = _no_report,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cursor = cursor  # of the last response received: where a new stream starts
        self._ended = ended
        self._open = open_stream
        self._tokens = tokens
        self._backoff = backoff
        self._on_reconnect = on_reconnect
        self._sleep = sleep
        self._clock = clock
        self._failures = 0

    def progressed(self) -> None:
        self._failures = 0

    def __iter__(self) -> Iterator[R]:
        while True:
            call = self._open(self.cursor, metadata_of(self._tokens))
            connected_at = self._clock()
            error: grpc.RpcError | None = None
            try:
                for response in call:
                    if response.cursor:
                        self.cursor = response.cursor
                    yield response
                reason = self._ended
            except grpc.RpcError as exc:
                if is_token_expired(exc):
                    self._fresh_token(exc)
                    self._on_reconnect("token expired; a fresh one was read", 0.0)
                    continue  # at once: the connection is fine, only the token was not
                code = cast(grpc.Call, exc).code()
                if code not in RECONNECT_CODES:
                    raise
                error = exc
                reason = f"{code.name}: {cast(grpc.Call, exc).details()}"
            finally:
                call.cancel()  # a no-op when the stream is over; frees it otherwise
            if self._clock() - connected_at >= self._backoff.healthy_after_seconds:
                # A long-lived stream cut off (max connection age, a restart) while nothing
                # happened: not a failed connection.
                self._failures = 0
            self._failures += 1
            limit = self._backoff.max_failures
            if limit is not None and self._failures > limit:
                if error is not None:
                    raise error
                raise WatchError(reason)
            delay = self._backoff.delay(self._failures)
            self._on_reconnect(reason, delay)
            self._sleep(delay)

    def _fresh_token(self, expired: grpc.RpcError) -> None:
        """Raises `expired` itself when no fresh token is to be had (a fixed MEDIA_TOKEN)."""
        try:
            fresh = self._tokens.refresh()
        except TokenError as exc:
            raise WatchError(f"the token expired, and {exc}") from None
        if fresh is None:
            raise expired
