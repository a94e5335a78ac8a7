"""Retry delays: the one exponential backoff with jitter every retry loop uses."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries spread out.

    attempt counts from 1; the delay doubles per attempt up to `cap`.
    """
    delay: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)
