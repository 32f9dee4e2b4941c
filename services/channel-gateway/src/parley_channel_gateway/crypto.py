"""Channel secrets encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256), with key rotation.

PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY holds one or more comma-separated Fernet keys; the first encrypts,
every one decrypts, so a new key is introduced by putting it first and the old one is dropped once
`rotate()` re-encrypted the stored secrets.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBox:
    """Encrypts a small JSON object of secrets into bytes for the database, and back."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SystemExit(
                "invalid configuration: PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY is empty; set at least one Fernet key "
                "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except (ValueError, TypeError):
            raise SystemExit(
                "invalid configuration: PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY must be Fernet keys (32 url-safe "
                "base64-encoded bytes), comma-separated"
            ) from None

    def seal(self, secrets: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(secrets, sort_keys=True).encode())

    def open(self, sealed: bytes) -> dict[str, Any]:
        try:
            value = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken as exc:
            raise ValueError("channel secrets cannot be decrypted with the configured encryption keys") from exc
        if not isinstance(value, dict):
            raise ValueError("channel secrets are not a JSON object")
        return value

    def rotate(self, sealed: bytes) -> bytes:
        """The same secrets encrypted with the first (newest) key."""
        return self._fernet.rotate(sealed)
