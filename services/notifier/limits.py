"""How many watch streams one user, and this process, may hold open at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from services.common.errors import RpcError
from services.notifier.memory import MemoryTrimmer
from services.notifier.metrics import ACTIVE_WATCH_STREAMS

# When this process is full, another replica may not be: a client should retry soon.
_FULL_RETRY_SECONDS = 1.0


class StreamLimits:
    def __init__(self, *, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self.open = 0
        self._by_user: dict[str, int] = {}
        self._memory = MemoryTrimmer()

    def by_user(self, subject: str) -> int:
        return self._by_user.get(subject, 0)

    @contextmanager
    def slot(self, subject: str) -> Iterator[None]:
        """Holds one stream for `subject` while the caller's stream is open; RESOURCE_EXHAUSTED
        naming the limit when either is reached."""
        held = self._by_user.get(subject, 0)
        if held >= self.per_user:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many open watch streams: at most {self.per_user} per user "
                "(NOTIFIER_MAX_STREAMS_PER_USER); close one first",
            )
        if self.open >= self.total:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this notifier holds its maximum of {self.total} watch streams "
                "(NOTIFIER_MAX_STREAMS); retry shortly",
                retry_after_seconds=_FULL_RETRY_SECONDS,
            )
        self._by_user[subject] = held + 1
        self.open += 1
        ACTIVE_WATCH_STREAMS.inc()
        self._memory.opened(self.open)
        try:
            yield
        finally:
            self.open -= 1
            ACTIVE_WATCH_STREAMS.dec()
            self._memory.closed(self.open)
            left = self._by_user[subject] - 1
            if left:
                self._by_user[subject] = left
            else:
                del self._by_user[subject]  # memory goes back down with the streams
