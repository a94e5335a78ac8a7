"""The per-user rate limit of CreateJob against a real nats-server: token buckets shared by every
limiter (each standing for a job_service replica with a connection of its own) through the
JetStream key-value bucket, compare-and-set between them, the TTL that forgets idle users, the
fall-back to this process while NATS is away, and the settings' defaults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NotFoundError

from services.common import jetstream
from services.common.sealing import Sealer
from services.job_service import settings as job_settings
from services.job_service.ratelimit import (
    RateLimiter,
    SharedBudget,
    bucket_key,
    open_shared_budget,
)
from services.job_service.settings import JobServiceSettings
from tests.servers import NatsServer

# A hang guard, never a statement about how fast anything must be.
WAIT_SECONDS = 30.0
KV_STREAM = f"KV_{jetstream.RATE_LIMIT_BUCKET}"  # the stream behind the key-value bucket


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(scope="module")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("ratelimit-nats"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Replicas:
    """Connections that stand for job_service replicas, each opening the shared budget."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: list[Client] = []

    async def budget(self, per_minute: int, burst: int) -> SharedBudget:
        nc = await jetstream.connect(self.url, f"replica-{len(self.connections)}")
        self.connections.append(nc)
        return await open_shared_budget(nc, per_minute, burst)

    async def limiters(
        self, count: int, per_minute: int, burst: int, clock: Clock | None = None
    ) -> list[RateLimiter]:
        made = []
        for _ in range(count):
            budget = await self.budget(per_minute, burst)
            if clock is None:
                made.append(RateLimiter(per_minute, burst, shared=budget))
            else:
                made.append(RateLimiter(per_minute, burst, shared=budget, clock=clock))
        return made

    async def close(self) -> None:
        for nc in self.connections:
            await nc.close()


@pytest_asyncio.fixture
async def replicas(nats_server: NatsServer) -> AsyncIterator[Replicas]:
    made = Replicas(nats_server.url)
    # Each test starts from an empty bucket (and from the TTL its own settings give it).
    nc = await jetstream.connect(nats_server.url, "cleanup")
    try:
        await nc.jetstream().delete_key_value(jetstream.RATE_LIMIT_BUCKET)
    except NotFoundError:
        pass
    await nc.close()
    try:
        yield made
    finally:
        await made.close()


async def test_replicas_share_one_burst_then_the_steady_rate(replicas: Replicas) -> None:
    clock = Clock()
    a, b = await replicas.limiters(2, 60, 3, clock)  # one per second, three at once
    # Calls alternate between the replicas: each write follows the other's.
    assert [await limiter.acquire("alice") for limiter in (a, b, a)] == [None, None, None]
    for limiter in (b, a):
        wait = await limiter.acquire("alice")
        assert wait is not None and 0.9 < wait <= 1.0
    assert await b.acquire("bob") is None  # buckets are per user
    clock.now += 1.0
    assert await b.acquire("alice") is None  # refilled by one, on either replica
    assert await a.acquire("alice") is not None
    clock.now += 60
    refilled = [await limiter.acquire("alice") for limiter in (a, b, a, b)]
    assert refilled[:3] == [None, None, None] and refilled[3] is not None  # to the burst only


async def test_concurrent_calls_on_two_replicas_cannot_pass_the_burst(
    replicas: Replicas,
) -> None:
    limiters = await replicas.limiters(2, 1, 5)  # no refill to speak of during the test
    calls = [limiters[n % 2].acquire("crowd") for n in range(30)]
    results = await asyncio.wait_for(asyncio.gather(*calls), WAIT_SECONDS)
    assert sum(1 for r in results if r is None) == 5, results
    refused = [r for r in results if r is not None]
    assert all(0 < wait <= 60 for wait in refused), refused


async def test_any_subject_is_a_key_that_does_not_reveal_it(replicas: Replicas) -> None:
    (limiter,) = await replicas.limiters(1, 60, 2)
    subjects = ["user@example.com", "a b/c.*>", "ünïcødé 🎨", "x" * 2000, ""]
    for subject in subjects:
        assert await limiter.acquire(subject) is None
    assert limiter._shared is not None
    kv = limiter._shared.kv
    keys = await kv.keys()
    assert sorted(keys) == sorted({bucket_key(s) for s in subjects})
    assert not any("example" in key or "@" in key for key in keys)
    # A value this version cannot read is a full bucket, overwritten by the next call.
    await kv.put(bucket_key("mangled"), b"not a bucket")
    fresh = RateLimiter(60, 2, shared=limiter._shared)
    assert [await fresh.acquire("mangled") for _ in range(3)][:2] == [None, None]


async def test_an_idle_user_is_dropped_once_their_bucket_would_be_full(
    replicas: Replicas,
) -> None:
    (limiter,) = await replicas.limiters(1, 600, 2)  # full again 0.2 s after it was empty
    assert limiter._shared is not None
    kv = limiter._shared.kv
    info = await replicas.connections[0].jetstream().stream_info(KV_STREAM)
    assert info.config.max_age == 2.0  # the refill time, rounded up, plus a second
    await limiter.acquire("idle")
    await kv.get(bucket_key("idle"))
    await asyncio.sleep(2.5)
    with pytest.raises(KeyNotFoundError):
        await kv.get(bucket_key("idle"))
    # Another replica started with other settings sets the TTL that fits them.
    await replicas.budget(6, 10)  # 100 s to refill
    info = await replicas.connections[1].jetstream().stream_info(KV_STREAM)
    assert info.config.max_age == 101.0


async def test_without_nats_each_replica_limits_on_its_own_then_shares_again(
    replicas: Replicas, nats_server: NatsServer
) -> None:
    (limiter,) = await replicas.limiters(1, 1, 3)
    limiter.FALLBACK_SECONDS = 0.2
    assert [await limiter.acquire("alice") for _ in range(2)] == [None, None]
    await nats_server.stop()
    try:
        # Answered at once from what this replica last saw: one token left, then none.
        assert await asyncio.wait_for(limiter.acquire("alice"), WAIT_SECONDS) is None
        assert await asyncio.wait_for(limiter.acquire("alice"), WAIT_SECONDS) is not None
        # A user this replica never saw gets a burst of this replica's own.
        local = [await asyncio.wait_for(limiter.acquire("bob"), WAIT_SECONDS) for _ in range(4)]
        assert local[:3] == [None, None, None] and local[3] is not None
    finally:
        await nats_server.start()
    assert limiter._shared is not None
    kv = limiter._shared.kv
    # Once NATS answers again (and FALLBACK_SECONDS have passed), calls write to the bucket.
    for n in range(int(WAIT_SECONDS / 0.1)):
        assert await limiter.acquire(f"carol-{n}") is None
        try:
            await kv.get(bucket_key(f"carol-{n}"))
            break
        except (KeyNotFoundError, nats.errors.Error):
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the limiter did not go back to the shared budget")


async def test_zero_turns_the_limit_off_and_burst_zero_means_a_minute() -> None:
    off = RateLimiter(0)
    assert not off.enabled
    assert [await off.acquire("alice") for _ in range(1000)] == [None] * 1000
    clock = Clock()
    minute = RateLimiter(5, clock=clock)  # in this process only: no shared budget given
    assert minute.burst == 5
    assert [await minute.acquire("alice") for _ in range(5)] == [None] * 5
    wait = await minute.acquire("alice")
    assert wait is not None and 11.9 < wait <= 12.0  # one call per 12 s


def test_default_settings_limit_every_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_BURST", "MAX_ACTIVE_JOBS_PER_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://u@localhost/db")
    monkeypatch.setenv("AUTH_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", Sealer.new_key())
    limits = JobServiceSettings.from_env().limits
    assert limits.rate_limit_per_minute == job_settings.RATE_LIMIT_PER_MINUTE > 0
    assert limits.rate_limit_burst == job_settings.RATE_LIMIT_BURST > 0
    assert limits.max_active_jobs_per_user == job_settings.MAX_ACTIVE_JOBS_PER_USER > 0
    for name in ("RATE_LIMIT_PER_MINUTE", "MAX_ACTIVE_JOBS_PER_USER"):
        monkeypatch.setenv(name, "0")
    limits = JobServiceSettings.from_env().limits
    assert limits.rate_limit_per_minute == 0 and limits.max_active_jobs_per_user == 0
