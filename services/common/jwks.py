"""Public keys for RS256 and ES256 bearer tokens, from a JWKS file or URL.

Keys are looked up by the token's `kid`. A URL's keys are cached for `cache_seconds` and fetched
again when a token names a key the set does not hold (an identity provider rotating its keys),
but at most once per `min_refresh_seconds`, so tokens with made-up `kid`s cannot turn every call
into a fetch. A failed fetch keeps the keys already held. Lookups never do I/O; fetches run off
the event loop, one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.common.config import SettingsError

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
_MAX_JWKS_BYTES = 1024 * 1024
_FETCH_TIMEOUT_SECONDS = 5.0

# What a JWKS key becomes here: its public half (RS256 and ES256 only).
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str | None  # the JWK's own `alg`, when it names one
    key: PublicKey


class KeySet:
    def __init__(
        self,
        *,
        file: str = "",
        url: str = "",
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 10.0,
    ) -> None:
        if bool(file) == bool(url):
            raise ValueError("a KeySet reads exactly one of a file or a URL")
        self._file = file
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._keys: list[_Key] = []
        self._loaded_at = -float("inf")  # when keys were last loaded successfully
        self._tried_at = -float("inf")  # when a load was last attempted
        self._lock: asyncio.Lock | None = None
        if file:
            # A file is local: read it now so that a bad one stops the service at start-up.
            try:
                self._keys = _parse(Path(file).read_bytes())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"AUTH_JWKS_FILE {file}: {exc}") from None
            self._loaded_at = self._tried_at = time.monotonic()

    def find(self, kid: str | None, alg: str) -> PublicKey | None:
        """The public key that verifies `alg` tokens with this `kid` (a token without a kid
        matches when exactly one key fits the algorithm)."""
        fits = [k for k in self._keys if _fits(k, alg)]
        if kid is not None:
            fits = [k for k in fits if k.kid == kid]
        return fits[0].key if len(fits) == 1 else None

    def wants_refresh(self, kid: str | None, alg: str) -> bool:
        """True when a fetch might help: the key is unknown or the cache is old, and the last
        attempt is not too recent."""
        now = time.monotonic()
        if now - self._tried_at < self._min_refresh_seconds:
            return False
        stale = now - self._loaded_at > self._cache_seconds
        return stale or self.find(kid, alg) is None

    async def refresh(self) -> None:
        """Loads the keys again, unless another call just did."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._tried_at < self._min_refresh_seconds:
                return  # a concurrent call refreshed while this one waited
            await asyncio.to_thread(self.reload)

    def reload(self) -> bool:
        """Blocking: fetches and parses the keys; on failure keeps the old ones."""
        self._tried_at = time.monotonic()
        source = self._file or self._url
        try:
            if self._file:
                raw = Path(self._file).read_bytes()
            else:
                with urllib.request.urlopen(self._url, timeout=_FETCH_TIMEOUT_SECONDS) as reply:
                    raw = reply.read(_MAX_JWKS_BYTES + 1)
            keys = _parse(raw)
        except (OSError, ValueError) as exc:
            log.warning("could not load JWKS from %s: %s", source, exc)
            return False
        self._keys = keys
        self._loaded_at = time.monotonic()
        log.info("loaded %d signing key(s) from %s", len(keys), source)
        return True


def _parse(raw: bytes) -> list[_Key]:
    if len(raw) > _MAX_JWKS_BYTES:
        raise ValueError(f"JWKS larger than {_MAX_JWKS_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JWKS (an object with a "keys" list)')
    keys: list[_Key] = []
    for entry in data["keys"]:
        # Encryption keys and symmetric keys have no business verifying tokens here.
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            # An RSA or EC key, public or private (pyjwt leaves PyJWK.key untyped).
            key: PublicKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("skipping unusable JWK %s: %s", entry.get("kid"), exc)
            continue
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            key = key.public_key()
        kid = entry.get("kid")
        alg = entry.get("alg")
        keys.append(
            _Key(
                kid=kid if isinstance(kid, str) else None,
                alg=alg if isinstance(alg, str) else None,
                key=key,
            )
        )
    if not keys:
        raise ValueError("the JWKS holds no RSA or EC signing key")
    return keys


def _fits(key: _Key, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if alg == "RS256":
        return isinstance(key.key, rsa.RSAPublicKey)
    if alg == "ES256":
        return isinstance(key.key, ec.EllipticCurvePublicKey) and isinstance(
            key.key.curve, ec.SECP256R1
        )
    return False
