"""Per-user rate limit of CreateJob: a token bucket per subject, shared by every job_service
replica through a JetStream key-value bucket (jetstream.RATE_LIMIT_BUCKET).

A user's bucket is one small value, "<tokens> <unix time>", under a key made from a hash of their
subject (KV keys allow only [-/_=.a-zA-Z0-9], and NATS need not learn who the users are). A call
reads nothing first: it refills the value this replica last saw by the time since, takes a token
and writes the result with compare-and-set on the revision it saw, one round trip. Only when
another replica wrote in between (or this one has not seen the value) does it read and try again.
A refusal needs no round trip once the value last seen is empty: other replicas can only have
taken tokens since, never added any. The bucket's TTL drops a user idle long enough to be full.

When NATS is disconnected or does not answer within TIMEOUT_SECONDS, the same buckets are kept in
this process instead, for FALLBACK_SECONDS before NATS is tried again. That fails open, though not
unlimited: each replica still enforces the rate, and the active-job cap in Postgres still bounds
the work; refusing every create while Postgres could take them would make NATS a second point of
failure of CreateJob for the sake of a limit that only a flood can reach.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common import jetstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedBudget:
    """Where the replicas' buckets live, and whether NATS is connected right now."""

    kv: KeyValue
    connected: Callable[[], bool]


def refill_seconds(per_minute: int, burst: int) -> float:
    """How long an emptied bucket takes to be full again (after that, no value = a full bucket)."""
    return (burst or per_minute) * 60.0 / max(per_minute, 1)


async def open_shared_budget(nc: Client, per_minute: int, burst: int) -> SharedBudget:
    """Creates the bucket (or sets its TTL for these settings) and returns it."""
    js = nc.jetstream()
    # A second of margin: a value must not expire before its bucket has refilled.
    ttl = math.ceil(refill_seconds(per_minute, burst)) + 1.0
    await jetstream.ensure_rate_limit_bucket(js, ttl_seconds=ttl)
    kv = await js.key_value(jetstream.RATE_LIMIT_BUCKET)
    return SharedBudget(kv, lambda: nc.is_connected)


def bucket_key(subject: str) -> str:
    """The KV key of a subject: any string maps to a valid key that does not reveal it."""
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


class _Seen(NamedTuple):
    tokens: float
    at: float  # unix time the tokens were counted at (the same clock on every replica)
    revision: int  # KV revision of that value; 0: no value stored


class RateLimiter:
    # One KV round trip takes well under a millisecond; this long means NATS is in trouble.
    TIMEOUT_SECONDS = 0.5
    FALLBACK_SECONDS = 5.0
    # Writes lost to other replicas before a call is refused: losing this often means the user's
    # calls arrive at several replicas at once, faster than they can take turns.
    _ATTEMPTS = 4
    # Values seen are forgotten once this many are held (a full bucket is the same as no value).
    _MAX_SUBJECTS = 100_000

    def __init__(
        self,
        per_minute: int,
        burst: int = 0,
        *,
        shared: SharedBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """per_minute 0 turns the limit off; burst 0 means per_minute. Without `shared` the
        buckets live in this process only (each replica allows the full rate)."""
        self.per_minute = per_minute
        self.burst = burst or per_minute
        self._rate = per_minute / 60.0
        self._capacity = float(self.burst)
        self._shared = shared
        # Wall-clock time, since values written by one replica are refilled by another; a skew of
        # d seconds between replicas is worth d * rate tokens at most.
        self._clock = clock
        self._seen: dict[str, _Seen] = {}  # bucket key -> the value this process last knew
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # bucket key -> (lock, holders)
        self._shared_again_at = 0.0  # time.monotonic() before which NATS is not tried

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    async def acquire(self, subject: str) -> float | None:
        """Takes one token: None when the call may go ahead, else seconds until it may."""
        if not self.enabled:
            return None
        key = bucket_key(subject)
        wait = self._wait_if_empty(key)
        if wait is not None:
            return wait  # no round trip: the shared value can only hold fewer tokens
        async with self._turn(key):
            if not self._shared_usable():
                return self._take_locally(key)
            try:
                async with asyncio.timeout(self.TIMEOUT_SECONDS):
                    return await self._take_shared(key)
            except (TimeoutError, nats.errors.Error) as exc:
                self._shared_again_at = time.monotonic() + self.FALLBACK_SECONDS
                log.warning(
                    "rate limit: NATS key-value unusable (%s); limiting in this process for %.0f s",
                    type(exc).__name__,
                    self.FALLBACK_SECONDS,
                )
                return self._take_locally(key)

    def _shared_usable(self) -> bool:
        return (
            self._shared is not None
            and self._shared.connected()
            and time.monotonic() >= self._shared_again_at
        )

    async def _take_shared(self, key: str) -> float | None:
        assert self._shared is not None
        seen = self._seen.get(key)
        for _ in range(self._ATTEMPTS):
            now = self._clock()
            tokens = self._tokens(seen, now)
            if tokens < 1.0:
                return self._wait(tokens)
            left = tokens - 1.0
            try:
                revision = await self._shared.kv.update(
                    key, f"{left:.6f} {now:.6f}".encode(), last=seen.revision if seen else 0
                )
            except KeyWrongLastSequenceError:
                seen = await self._read(key)  # another replica wrote since: start from its value
                continue
            self._remember(key, _Seen(left, now, revision))
            return None
        return 1.0 / self._rate

    async def _read(self, key: str) -> _Seen:
        assert self._shared is not None
        try:
            entry = await self._shared.kv.get(key)
        except KeyNotFoundError as exc:
            # Expired (a full bucket); a deleted key leaves a marker whose revision must match.
            marker = exc.entry.revision if exc.entry is not None else 0
            seen = _Seen(self._capacity, 0.0, marker or 0)
        else:
            seen = _Seen(*_decode(entry.value, self._capacity), entry.revision or 0)
        self._remember(key, seen)
        return seen

    def _take_locally(self, key: str) -> float | None:
        """The same bucket, decided in this process (its revision kept for the next write)."""
        now = self._clock()
        seen = self._seen.get(key)
        tokens = self._tokens(seen, now)
        if tokens < 1.0:
            return self._wait(tokens)
        self._remember(key, _Seen(tokens - 1.0, now, seen.revision if seen else 0))
        return None

    def _wait_if_empty(self, key: str) -> float | None:
        seen = self._seen.get(key)
        if seen is None:
            return None
        tokens = self._tokens(seen, self._clock())
        return self._wait(tokens) if tokens < 1.0 else None

    def _tokens(self, seen: _Seen | None, now: float) -> float:
        if seen is None:
            return self._capacity
        return min(self._capacity, seen.tokens + max(0.0, now - seen.at) * self._rate)

    def _wait(self, tokens: float) -> float:
        return (1.0 - tokens) / self._rate

    def _remember(self, key: str, seen: _Seen) -> None:
        if key not in self._seen and len(self._seen) >= self._MAX_SUBJECTS:
            now = self._clock()
            full = [k for k, s in self._seen.items() if self._tokens(s, now) >= self._capacity]
            for k in full:
                del self._seen[k]
            if len(self._seen) >= self._MAX_SUBJECTS:
                self._seen.clear()  # everyone busy at once: forget rather than grow without end
        self._seen[key] = seen

    @asynccontextmanager
    async def _turn(self, key: str) -> AsyncIterator[None]:
        """One call per user at a time in this process: concurrent calls of one user here would
        only make each other's compare-and-set fail."""
        lock, holders = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, holders + 1)
        try:
            async with lock:
                yield
        finally:
            lock, holders = self._locks[key]
            if holders == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, holders - 1)


def _decode(value: bytes | None, capacity: float) -> tuple[float, float]:
    """(tokens, at) of a stored value; one that does not parse counts as a full bucket."""
    try:
        tokens, at = (float(part) for part in (value or b"").split())
    except ValueError:
        return capacity, 0.0
    if not (math.isfinite(tokens) and math.isfinite(at)):
        return capacity, 0.0
    return max(0.0, min(tokens, capacity)), at
