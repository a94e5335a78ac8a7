"""Where a webhook may be sent. job_service checks an endpoint's URL and the addresses its host
resolves to when the endpoint is registered; the sender checks the addresses again at every
delivery, as it connects (a name that resolved to a public address at registration may resolve
to a private one later: DNS rebinding).

Refused unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set: loopback, private (RFC 1918, unique local),
link-local (and with it the 169.254.169.254 metadata service), shared (100.64.0.0/10, where
some clouds keep theirs), multicast, reserved and unspecified addresses, also when written inside
an IPv6 address (IPv4-mapped, NAT64, 6to4, Teredo).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.resolver import Resolver, Unresolved

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(ValueError):
    """The URL or an address it resolves to is not allowed; the message says why, and never
    names the address (it may be internal)."""


@dataclass(frozen=True)
class UrlPolicy:
    allow_http: bool = False  # WEBHOOK_ALLOW_HTTP
    allow_private: bool = False  # WEBHOOK_ALLOW_PRIVATE_NETWORKS


@dataclass(frozen=True)
class Target:
    url: str
    host: str  # without brackets for IPv6
    port: int


def check_url(url: str, policy: UrlPolicy) -> Target:
    """The URL's host and port when its form is allowed; raises UrlRefused otherwise."""
    if not url:
        raise UrlRefused("is required")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise UrlRefused("must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes:
        raise UrlRefused("must be https" if not policy.allow_http else "must be http or https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials")
    if parts.fragment:
        raise UrlRefused("must not have a fragment")
    host = parts.hostname
    if not host:
        raise UrlRefused("has no host")
    literal = _literal(host)
    if literal is not None and not policy.allow_private and not address_allowed(literal):
        raise UrlRefused("points at a private, loopback, link-local or reserved address")
    return Target(url, host, port or (443 if parts.scheme == "https" else 80))


def address_allowed(address: IPAddress) -> bool:
    """True for a public unicast address (see the module's docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_allowed(embedded)
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return False
    return address.is_global


def check_addresses(addresses: list[str], policy: UrlPolicy) -> None:
    """Raises UrlRefused if any of the addresses a host resolved to is not allowed: a name that
    resolves to a public and a private address is refused, whichever a connection would take."""
    if policy.allow_private:
        return
    for text in addresses:
        if not address_allowed(ipaddress.ip_address(text.split("%", 1)[0])):
            raise UrlRefused("resolves to a private, loopback, link-local or reserved address")


async def check_target(target: Target, policy: UrlPolicy, resolver: Resolver) -> None:
    """Resolves the target's host and checks every address (registration time)."""
    if _literal(target.host) is not None:
        return  # check_url has looked at it
    try:
        addresses = await resolver.addresses(target.host, target.port)
    except Unresolved:
        raise UrlRefused("host does not resolve") from None
    check_addresses(addresses, policy)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None
