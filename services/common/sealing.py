"""Webhook signing secrets at rest: sealed with Fernet (AES-128-CBC with HMAC-SHA256) under the
keys of WEBHOOK_SECRETS_KEYS, so that a copy of the database alone cannot sign webhooks.
job_service seals a secret when it mints one; the sender opens it to sign.

The first key seals and every key opens: to change keys, put a new one first, and drop the old
one once no secret sealed with it is in use (each rotation of an endpoint's secret seals anew).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class Unsealable(ValueError):
    """No key opens it: sealed under a key that is no longer configured."""


class Sealer:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        # Fernet raises ValueError for a key that is not 32 url-safe base64-encoded bytes.
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise Unsealable("no key of WEBHOOK_SECRETS_KEYS opens this secret") from None
