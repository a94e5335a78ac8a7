"""Webhook signing secrets at rest: sealed with Fernet (AES-128-CBC with HMAC-SHA256) under the
keys of WEBHOOK_SECRETS_KEYS, so that a copy of the database alone cannot sign webhooks.
job_service seals a secret when it mints one; the sender opens it to sign.

The first key seals and every key opens. Each sealed secret is stored with the fingerprint of the
key that sealed it (key_id), and job_service's sweeper seals again with the first key whatever
another key sealed: to change keys, add the new one, put it first, and drop the old one once the
sweeper has resealed everything (media_webhook_secrets_to_reseal is 0).
"""

from __future__ import annotations

import hashlib
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
        # Names the sealing key without revealing it: 64 bits of its SHA-256.
        self.key_id = hashlib.sha256(keys[0].encode()).hexdigest()[:16]

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise _unsealable() from None

    def reseal(self, sealed: str) -> str:
        """The same secret sealed with the first key, whichever key sealed it."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise _unsealable() from None


def _unsealable() -> Unsealable:
    return Unsealable("no key of WEBHOOK_SECRETS_KEYS opens this secret")
