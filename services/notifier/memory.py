"""Giving memory back to the system after many streams close.

CPython and glibc keep freed memory for reuse, so without help the notifier's RSS stays at its
peak after a burst of watchers leaves. When the open streams have fallen well below their peak,
a collection and glibc's malloc_trim return the free pages (a no-op where there is no glibc).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Only after this many streams have closed since the peak, and at most once per delay.
_MIN_DROP = 256
_DELAY_SECONDS = 2.0


def _malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class MemoryTrimmer:
    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._peak = 0
        self._pending: asyncio.TimerHandle | None = None

    def opened(self, count: int) -> None:
        self._peak = max(self._peak, count)

    def closed(self, count: int) -> None:
        if self._pending is None and self._peak - count >= _MIN_DROP and count <= self._peak // 2:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(_DELAY_SECONDS, self._run, count)

    def _run(self, count: int) -> None:
        self._pending = None
        self._peak = count
        gc.collect()
        self._trim()
        log.info("memory trimmed after streams closed", extra={"open_streams": count})
