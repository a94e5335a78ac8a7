"""Host names to addresses, on threads of their own (a bulkhead). getaddrinfo holds its thread
for as long as DNS takes, and a name whose servers never answer takes the system resolver's
whole timeout: in asyncio's default pool, which job_service keeps for CPU work such as decoding
input images, names chosen to hang would hold the threads every CreateJob needs."""

from __future__ import annotations

import socket

from services.common.bulkhead import Bulkhead, BulkheadTimeout

THREADS = 8
TIMEOUT_SECONDS = 5.0  # resolving a name at registration must not hold an RPC for long


class Unresolved(Exception):
    """The name does not resolve, or DNS did not answer in time."""


class Resolver:
    def __init__(self, threads: int = THREADS, timeout_seconds: float = TIMEOUT_SECONDS) -> None:
        self._bulkhead = Bulkhead("dns", threads, timeout_seconds)

    async def addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = await self._bulkhead.run(
                socket.getaddrinfo, host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError, BulkheadTimeout) as exc:
            raise Unresolved(host) from exc
        return [str(info[4][0]) for info in infos]

    def close(self) -> None:
        self._bulkhead.shutdown()
