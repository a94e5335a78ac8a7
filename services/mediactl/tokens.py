"""Where a command's bearer token comes from, and whether a fresh one can be had when a stream's
token expires.

A token given as such (`--token`, MEDIA_TOKEN) is fixed for the life of the process: when it
expires, nothing fresh can be had. A token file (`--token-file`, MEDIA_TOKEN_FILE) is read again
on expiry, so whatever keeps it fresh (a login helper, a projected service-account token) lets a
long watch carry on where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import grpc

from services.common.auth import bearer_metadata


class TokenError(Exception):
    """The token file cannot be read or is empty (shown without a traceback)."""


class TokenSource(Protocol):
    def current(self) -> str:
        """The token to send now."""
        ...

    def refresh(self) -> str | None:
        """A token other than `current()` (which it then becomes), or None when this source can
        never have one; raises TokenError when it could but has none now."""
        ...


@dataclass
class StaticToken:
    token: str = field(repr=False)

    def current(self) -> str:
        return self.token

    def refresh(self) -> str | None:
        return None


@dataclass
class FileToken:
    path: Path
    _token: str = field(default="", repr=False)

    def current(self) -> str:
        if not self._token:
            self._token = self._read()
        return self._token

    def refresh(self) -> str | None:
        token = self._read()
        if token == self._token:  # not renewed (yet): it would be refused the same way
            raise TokenError(f"the token file {self.path} holds no newer token")
        self._token = token
        return token

    def _read(self) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise TokenError(
                f"cannot read the token file {self.path}: {exc.strerror or exc}"
            ) from None
        if not token:
            raise TokenError(f"the token file {self.path} is empty")
        return token


def metadata_of(tokens: TokenSource) -> tuple[tuple[str, str], ...]:
    return bearer_metadata(tokens.current())


def is_token_expired(error: grpc.RpcError) -> bool:
    """UNAUTHENTICATED because the token's `exp` passed (services.common.auth's wording), as
    opposed to a token that is wrong and would stay wrong."""
    call = cast(grpc.Call, error)
    return (
        call.code() == grpc.StatusCode.UNAUTHENTICATED
        and "token expired" in (call.details() or "").lower()
    )
