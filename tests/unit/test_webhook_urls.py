"""Where a webhook may be sent (services/common/webhook_urls.py): https only unless http is
allowed, no credentials, and no private, loopback, link-local, shared or reserved address, also
when written inside an IPv6 address; and the job_service settings that shape endpoints."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.config import SettingsError
from services.common.resolver import Resolver
from services.common.sealing import Sealer, Unsealable
from services.common.webhook_urls import (
    Target,
    UrlPolicy,
    UrlRefused,
    address_allowed,
    check_addresses,
    check_target,
    check_url,
)
from services.job_service.settings import WebhookSettings

STRICT = UrlPolicy()
OPEN = UrlPolicy(allow_http=True, allow_private=True)

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # the cloud metadata service
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo of 10.0.0.1
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111"]


def url_of(address: str) -> str:
    return f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook"


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))
    with pytest.raises(UrlRefused, match="private, loopback, link-local or reserved") as caught:
        check_url(url_of(address), STRICT)
    assert address not in str(caught.value)  # the message never names the address
    with pytest.raises(UrlRefused):
        check_addresses([address], STRICT)
    # ... unless private networks are allowed.
    assert check_url(url_of(address), OPEN).url == url_of(address)
    check_addresses([address], OPEN)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    target = check_url(url_of(address), STRICT)
    assert (target.host, target.port) == (address, 443)
    check_addresses([address], STRICT)


def test_a_name_with_any_private_address_is_refused() -> None:
    with pytest.raises(UrlRefused, match="resolves to a private"):
        check_addresses(["93.184.215.14", "10.0.0.7"], STRICT)


def test_a_name_resolving_to_loopback_is_refused_without_naming_the_address() -> None:
    target = check_url("https://localhost:8443/hook", STRICT)
    with pytest.raises(UrlRefused, match="resolves to a private") as caught:
        asyncio.run(resolved(target, STRICT))
    assert "127.0.0.1" not in str(caught.value) and "::1" not in str(caught.value)
    asyncio.run(resolved(target, OPEN))


async def resolved(target: Target, policy: UrlPolicy) -> None:
    dns = Resolver()
    try:
        await check_target(target, policy, dns)
    finally:
        await dns.close()


def test_names_whose_dns_hangs_hold_no_thread_and_no_other_lookup() -> None:
    """Registering endpoints at names chosen to hang (their nameserver never answers) must not
    take the threads CreateJob decodes images on (asyncio's default pool), nor hold up other
    names; each such lookup ends at the resolver's timeout."""
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    nameserver = f"127.0.0.1:{blackhole.getsockname()[1]}"

    async def scenario() -> None:
        # Small: were names resolved on it, it would be full now.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        dns = Resolver(timeout_seconds=1.0, nameservers=[nameserver])
        hanging = [
            asyncio.create_task(
                check_target(check_url(f"https://h{n}.example/hook", STRICT), STRICT, dns)
            )
            for n in range(20)
        ]
        try:
            # Meanwhile (wait_for: hang guards only): CPU work, and a name the hosts file knows.
            assert await asyncio.wait_for(asyncio.to_thread(sum, [1, 2]), 10) == 3
            assert "127.0.0.1" in await asyncio.wait_for(dns.addresses("localhost", 443), 10)
            for task in hanging:
                with pytest.raises(UrlRefused, match="does not resolve"):
                    await task
            assert blackhole.recv(512)  # the queries did reach the silent nameserver
        finally:
            await dns.close()

    try:
        asyncio.run(scenario())
    finally:
        blackhole.close()


def test_https_only_unless_http_is_allowed() -> None:
    with pytest.raises(UrlRefused, match="must be https"):
        check_url("http://93.184.215.14/hook", STRICT)
    assert check_url("http://93.184.215.14/hook", UrlPolicy(allow_http=True)).port == 80
    with pytest.raises(UrlRefused, match="must be http or https"):
        check_url("ftp://93.184.215.14/hook", UrlPolicy(allow_http=True))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://user:secret@93.184.215.14/hook", "credentials"),
        ("https://user@93.184.215.14/hook", "credentials"),
        ("", "is required"),
        ("https://93.184.215.14/" + "a" * 3000, "longer than 2048"),
        ("https://93.184.215.14/a b", "without spaces"),
        ("https://exämple.com/hook", "ASCII"),
        ("https://93.184.215.14/hook#frag", "fragment"),
        ("https:///hook", "no host"),
        ("https://93.184.215.14:99999/hook", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UrlRefused, match=why):
        check_url(url, OPEN)


def test_webhook_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "WEBHOOK_ALLOW_HTTP",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS",
        "WEBHOOK_SECRET_OVERLAP_SECONDS",
        "MAX_WEBHOOK_ENDPOINTS_PER_USER",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", Sealer.new_key())
    settings = WebhookSettings.from_env()
    assert (
        settings.url_policy,
        settings.secret_overlap_seconds,
        settings.max_endpoints_per_user,
    ) == (STRICT, 86400, 20)


def test_webhook_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "yes")
    monkeypatch.setenv("WEBHOOK_SECRET_OVERLAP_SECONDS", "0")  # the old secret stops at once
    monkeypatch.setenv("MAX_WEBHOOK_ENDPOINTS_PER_USER", "3")
    new, old = Sealer.new_key(), Sealer.new_key()
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", f"{new},{old}")
    settings = WebhookSettings.from_env()
    assert (
        settings.url_policy,
        settings.secret_overlap_seconds,
        settings.max_endpoints_per_user,
    ) == (OPEN, 0, 3)
    # The first key seals; every key opens (a key change: the new one first).
    sealed_by_old = Sealer([old]).seal("whsec_old")
    assert settings.sealer.open(sealed_by_old) == "whsec_old"
    with pytest.raises(Unsealable):
        Sealer([old]).open(settings.sealer.seal("whsec_new"))


@pytest.mark.parametrize("keys", ["", "not-a-key", "c2hvcnQ="])
def test_secrets_keys_are_required_and_checked(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", keys)
    with pytest.raises(SettingsError, match="WEBHOOK_SECRETS_KEYS"):
        WebhookSettings.from_env()


def test_a_sealed_secret_is_not_the_secret() -> None:
    sealer = Sealer([Sealer.new_key()])
    secret = "whsec_" + "A" * 44
    sealed = sealer.seal(secret)
    assert secret not in sealed and "whsec_" not in sealed
    assert sealer.open(sealed) == secret


def test_a_secret_is_resealed_with_the_first_key_which_the_key_id_names() -> None:
    old, new = Sealer.new_key(), Sealer.new_key()
    changed = Sealer([new, old])
    assert changed.key_id == Sealer([new]).key_id != Sealer([old]).key_id
    assert new not in changed.key_id and len(changed.key_id) == 16
    resealed = changed.reseal(Sealer([old]).seal("whsec_kept"))
    assert Sealer([new]).open(resealed) == "whsec_kept"
    with pytest.raises(Unsealable):
        Sealer([old]).open(resealed)
    with pytest.raises(Unsealable):
        Sealer([Sealer.new_key()]).reseal(resealed)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_ALLOW_HTTP", "maybe"),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "2"),
        ("WEBHOOK_SECRET_OVERLAP_SECONDS", "-1"),
        ("WEBHOOK_SECRET_OVERLAP_SECONDS", "a day"),
        ("MAX_WEBHOOK_ENDPOINTS_PER_USER", "0"),
    ],
)
def test_bad_webhook_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", Sealer.new_key())
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        WebhookSettings.from_env()
