from services.job_service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_gets_a_burst_then_the_steady_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=3, clock=clock)  # one per second
    assert [limiter.acquire("alice") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("alice")
    assert wait is not None and 0.9 < wait <= 1.0
    assert limiter.acquire("bob") is None  # buckets are per user
    clock.now += 1.0
    assert limiter.acquire("alice") is None
    assert limiter.acquire("alice") is not None
    clock.now += 60
    assert [limiter.acquire("alice") for _ in range(3)] == [None, None, None]  # refilled to burst


def test_the_burst_defaults_to_a_minute_of_calls_and_zero_turns_it_off() -> None:
    clock = Clock()
    limiter = RateLimiter(5, clock=clock)
    assert [limiter.acquire("alice") for _ in range(5)] == [None] * 5
    wait = limiter.acquire("alice")
    assert wait is not None and 11.9 < wait <= 12.0  # one call per 12 s
    off = RateLimiter(0)
    assert not off.enabled and all(off.acquire("alice") is None for _ in range(1000))


def test_idle_users_are_forgotten_when_the_table_is_full() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=2, clock=clock)
    limiter._MAX_SUBJECTS = 10
    for n in range(10):
        limiter.acquire(f"user-{n}")
    clock.now += 10  # every bucket refills
    assert limiter.acquire("newcomer") is None
    assert len(limiter._buckets) == 1
