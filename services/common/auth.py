"""Bearer-token identity: verifying JWTs on servers and minting them for local runs and tests.

The job owner is the token's `sub`. Workers carry the `worker` role in the `roles` claim; client
tokens have no roles and cannot call WorkerService.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import jwt

from services.common.config import AuthSettings

WORKER_ROLE = "worker"
_ALGORITHMS = ["HS256"]
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

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[Identity, float]] = {}

    def verify(self, token: str) -> Identity:
        hit = self._cache.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        identity, expires = self._verify(token)
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (identity, expires)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        options = {"require": ["sub", "exp"]}
        try:
            claims = jwt.decode(
                token,
                self._settings.jwt_secret,
                algorithms=_ALGORITHMS,
                audience=self._settings.audience,
                issuer=self._settings.issuer or None,
                options=options,
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > _MAX_SUBJECT_CHARS:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token: bad subject")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token: bad roles claim")
        return Identity(subject=subject, roles=frozenset(roles)), float(claims["exp"])

    def from_metadata(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Identity:
        header = bearer_from_metadata(metadata)
        if header is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer <token>` metadata"
            )
        return self.verify(header)


def bearer_from_metadata(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
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
