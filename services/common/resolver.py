"""Host names to addresses, without threads: c-ares (aiodns, through aiohttp's AsyncResolver).

getaddrinfo on a thread holds that thread for as long as DNS takes (for a name whose servers
never answer, the system resolver's whole timeout) and cannot be cancelled, so names chosen to
hang would take threads others need: in job_service asyncio's default pool, where CreateJob
decodes input images; in the sender, the lookups of other users' deliveries. Here a query is
dropped as soon as its caller gives up, and holds nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.abc import ResolveResult
from aiohttp.resolver import AsyncResolver

TIMEOUT_SECONDS = 5.0  # resolving a name at registration must not hold an RPC for long


class Unresolved(OSError):
    """The name does not resolve, or DNS did not answer in time. An OSError, as aiohttp expects
    of a resolver (it reports a failed lookup then)."""


class Resolver:
    def __init__(self, timeout_seconds: float = TIMEOUT_SECONDS, **options: Any) -> None:
        """options: for aiodns.DNSResolver (tests name their own nameservers)."""
        self._timeout_seconds = timeout_seconds
        self._options = options
        self._dns: AsyncResolver | None = None

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        if self._dns is None:  # made on the loop it serves
            self._dns = AsyncResolver(**self._options)
        try:
            return await asyncio.wait_for(
                self._dns.resolve(host, port, family), self._timeout_seconds
            )
        except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
            raise Unresolved(f"{host} does not resolve") from exc

    async def addresses(self, host: str, port: int) -> list[str]:
        return [found["host"] for found in await self.resolve(host, port)]

    async def close(self) -> None:
        if self._dns is not None:
            await self._dns.close()
