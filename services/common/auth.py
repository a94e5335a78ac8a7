"""Bearer-token identity: verifying JWTs on servers and minting them for local runs and tests.

Tokens are HS256 with a shared secret (AUTH_JWT_SECRET) or RS256/ES256 with a public key from a
JWKS (services.common.jwks). The algorithm a token may use follows from the key that verifies
it, never from the token alone: an HS256 token is checked only against the secret, so a token
"signed" with a public key as its HMAC secret fails, and `alg: none` is never accepted.

The job owner is the token's `sub`. Workers carry the `worker` role in the `roles` claim; client
tokens have no roles and cannot call WorkerService.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import jwt
from jwt.types import Options

from services.common.config import AuthSettings
from services.common.errors import RpcError
from services.common.jwks import ASYMMETRIC_ALGORITHMS, KeySet, PublicKey

WORKER_ROLE = "worker"
# The notifier reads jobs for its watchers through job_service's JobReaderService with this role.
NOTIFIER_ROLE = "notifier"
# The webhook sender reads the jobs it delivers (fresh output URLs) the same way, with this role.
WEBHOOKS_ROLE = "webhooks"
_MAX_SUBJECT_CHARS = 256


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: frozenset[str]

    @property
    def is_worker(self) -> bool:
        return WORKER_ROLE in self.roles


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenVerifier:
    # Clients send the same token on every call; checking a signature costs more than the rest of
    # a cheap RPC, so verified tokens are remembered until they expire.
    _CACHE_SIZE = 10_000

    def __init__(self, settings: AuthSettings, keys: KeySet | None = None) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._keys = keys
        if keys is None and (settings.jwks_file or settings.jwks_url):
            self._keys = KeySet(
                file=settings.jwks_file,
                url=settings.jwks_url,
                cache_seconds=settings.jwks_cache_seconds,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
            )

    def verify(self, token: str) -> Identity:
        """Checks the token with the keys at hand (no I/O)."""
        hit = self._cache.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        identity, expires = self._verify(token)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (identity, expires)
        return identity

    async def verify_async(self, token: str) -> Identity:
        """Like verify, but first fetches the JWKS again when the token names a key not held
        (or the cached keys are old); the fetch runs off the event loop."""
        hit = self._cache.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        if self._keys is not None:
            kid, alg = _key_hint(token)
            if alg in ASYMMETRIC_ALGORITHMS and self._keys.wants_refresh(kid, alg):
                await self._keys.refresh()
        return self.verify(token)

    def _key(self, token: str) -> tuple[str | PublicKey, str]:
        """The key that must verify this token, and the one algorithm it may use."""
        kid, alg = _key_hint(token)
        if alg == "HS256" and self._settings.jwt_secret:
            return self._settings.jwt_secret, alg
        if alg in ASYMMETRIC_ALGORITHMS and self._keys is not None:
            key = self._keys.find(kid, alg)
            if key is None:
                raise AuthError(
                    grpc.StatusCode.UNAUTHENTICATED, "invalid token: unknown signing key"
                )
            return key, alg
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED, f"invalid token: algorithm {alg!r} is not accepted"
        )

    def _verify(self, token: str) -> tuple[Identity, float]:
        options: Options = {"require": ["sub", "exp"]}
        key, alg = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._settings.audience,
                issuer=self._settings.issuer or None,
                options=options,
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
        except (OverflowError, ValueError, TypeError, RecursionError):
            # PyJWT converts time claims with int(): an `exp` of 1e400 (inf) overflows there.
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "invalid token: malformed claims"
            ) from None
        for name in _TIME_CLAIMS:
            _check_time(claims, name)
        subject = claims.get("sub")
        # The subject is stored as the job owner: no control characters (Postgres refuses NUL).
        if (
            not isinstance(subject, str)
            or not subject
            or len(subject) > _MAX_SUBJECT_CHARS
            or not subject.isprintable()
        ):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token: bad subject")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token: bad roles claim")
        return Identity(subject=subject, roles=frozenset(roles)), float(claims["exp"])

    def from_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        header = bearer_from_metadata(metadata)
        if header is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer <token>` metadata"
            )
        return self.verify(header)

    async def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        """The caller's identity (what servicers use): from_metadata with JWKS refreshes."""
        header = bearer_from_metadata(metadata)
        if header is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer <token>` metadata"
            )
        return await self.verify_async(header)

    async def require(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        role: str | tuple[str, ...],
        service: str,
    ) -> Identity:
        """The caller's identity, which must carry `role` (or one of several): `service` refuses
        any other caller (PERMISSION_DENIED)."""
        roles = (role,) if isinstance(role, str) else role
        who = await self.identify(metadata)
        if who.roles.isdisjoint(roles):
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{service} needs a {' or '.join(roles)} credential",
            )
        return who


def _key_hint(token: str) -> tuple[str | None, str]:
    """The unverified header's `kid` and `alg` (they only choose the key; the signature decides)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
    kid, alg = header.get("kid"), header.get("alg")
    return (kid if isinstance(kid, str) else None), (alg if isinstance(alg, str) else "")


def bearer_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def mint_token(
    secret: str,
    subject: str,
    *,
    roles: tuple[str, ...] = (),
    audience: str = "media",
    issuer: str = "",
    ttl_seconds: int = 24 * 3600,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "aud": audience, "iat": now, "nbf": now}
    claims["exp"] = now + ttl_seconds
    if roles:
        claims["roles"] = list(roles)
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# NumericDate claims (RFC 7519): numbers of seconds. Anything past the year 9999 is no time at all
# (and 10**400 would overflow a float).
_TIME_CLAIMS = ("exp", "nbf", "iat")
_MAX_TIME = 253_402_300_799


def _check_time(claims: dict[str, object], name: str) -> None:
    value = claims.get(name)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _MAX_TIME  # (NaN fails this too; compared before any float())
    ):
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: bad {name} claim")
