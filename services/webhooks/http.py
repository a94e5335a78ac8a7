"""The HTTP client deliveries go out through: aiohttp with every connection's addresses checked
as they are resolved, no redirects, no proxies from the environment, a total timeout and a capped
read of the response.

The resolver is where the address rule (services.common.webhook_urls) applies: the addresses a
connection is made to are the ones just checked, so a name that resolved to a public address when
the endpoint was registered and resolves to a private one now (DNS rebinding) is refused. aiohttp
does not resolve a host written as an IP address; check_url checks those. Errors are reported in
words of our own: aiohttp's name the address connected to, which may be internal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.common.resolver import Resolver
from services.common.webhook_urls import UrlPolicy, UrlRefused, check_addresses, check_url
from services.webhooks.outcome import Result

log = logging.getLogger(__name__)


class GuardedResolver(AbstractResolver):
    """Resolves without a thread (services.common.resolver: a receiver's hanging DNS holds only
    its own attempt), then refuses the lot unless every address is allowed."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._resolver = Resolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        check_addresses([entry["host"] for entry in found], self._policy)
        return found

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True)
class Answer:
    """One attempt: what it met, and how long the HTTP part took."""

    result: Result
    seconds: float
    response_head: str = ""
    attempted: bool = True  # False: refused before any connection was made


class Sender:
    def __init__(
        self,
        policy: UrlPolicy,
        *,
        timeout_seconds: float,
        response_max_bytes: int,
        max_connections: int,
    ) -> None:
        self._policy = policy
        self._timeout_seconds = timeout_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_bytes = response_max_bytes
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy),
                # Every new connection resolves (and is checked) afresh.
                use_dns_cache=False,
                limit=self._max_connections,
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trust_env=False,  # no proxy from HTTP(S)_PROXY: deliveries go straight out
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            check_url(url, self._policy)
        except UrlRefused as exc:
            return Answer(Result(error=f"the URL {exc}"), 0.0, attempted=False)
        started = time.perf_counter()
        try:
            async with self._open().post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                head = await self._read_head(response)
                status = response.status
        except Exception as exc:
            return Answer(Result(error=describe(exc, self._timeout_seconds)), _since(started))
        text = head.decode("utf-8", errors="replace")
        return Answer(Result(status_code=status), _since(started), text)

    async def _read_head(self, response: aiohttp.ClientResponse) -> bytes:
        """At most response_max_bytes of the body; the rest is never read (the connection is
        then closed rather than reused)."""
        chunks: list[bytes] = []
        remaining = self._max_bytes
        while remaining > 0:
            chunk = await response.content.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _since(started: float) -> float:
    return time.perf_counter() - started


def describe(exc: BaseException, timeout_seconds: float) -> str:
    """An attempt's error in our own words: never an address, a path or a secret."""
    if isinstance(exc, UrlRefused):
        return f"the host {exc}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"timed out after {timeout_seconds:g} s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS failed: the server's certificate is not valid for the host"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # From the error number: asyncio's own text ("Connect call failed (<address>)") names
        # the address connected to.
        errno = exc.os_error.errno if exc.os_error else None
        return "connection failed" + (f": {os.strerror(errno).lower()}" if errno else "")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "the answer was not valid HTTP"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the URL is not valid"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "connection failed"
    log.warning("unexpected error sending a webhook", exc_info=exc)
    return "the request failed"
