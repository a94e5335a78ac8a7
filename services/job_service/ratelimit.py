"""Per-user rate limit of CreateJob: a token bucket per subject, held in this process.

Each replica keeps its own buckets, so with N replicas behind a load balancer a user can reach N
times the configured rate. That keeps CreateJob free of a shared round trip; the cap on active
jobs (checked in Postgres, see Store.create_jobs) is what bounds the work a user can queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    # Buckets of users who stopped calling are dropped once this many exist (a full bucket is
    # the same as no bucket).
    _MAX_SUBJECTS = 100_000

    def __init__(
        self,
        per_minute: int,
        burst: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """per_minute 0 turns the limit off; burst 0 means per_minute."""
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._capacity = float(burst or per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # subject -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, subject: str) -> float | None:
        """Takes one token: None when the call may go ahead, else seconds until it may."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(subject, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[subject] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if subject not in self._buckets and len(self._buckets) >= self._MAX_SUBJECTS:
            self._evict(now)
        self._buckets[subject] = (tokens - 1.0, now)
        return None

    def _evict(self, now: float) -> None:
        full = [
            s
            for s, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._rate >= self._capacity
        ]
        for subject in full:
            del self._buckets[subject]
        if len(self._buckets) >= self._MAX_SUBJECTS:
            self._buckets.clear()  # everyone busy at once: forget rather than grow without end
