"""Webhook authenticity checks (and the custom channel's signer). Every comparison is constant-time.

- Meta (Messenger, Instagram, WhatsApp): `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`.
- Telegram: `X-Telegram-Bot-Api-Secret-Token` equals the secret given to setWebhook.
- Twilio SMS: `X-Twilio-Signature: <base64 HMAC-SHA1(auth token, URL + each form field's name and value in name
  order)>`, the URL being the one Twilio requested (the public URL, not the one behind the Ingress).
- Custom channels: `X-Parley-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`;
  several `v1=` entries are allowed (secret rotation) and a `t` outside the tolerance window is refused.
- LINE: `X-Line-Signature: <base64 HMAC-SHA256(channel secret, raw body)>`.
- Viber: `X-Viber-Content-Signature: <hex HMAC-SHA256(auth token, raw body)>`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Sequence

META_HEADER = "X-Hub-Signature-256"
TELEGRAM_HEADER = "X-Telegram-Bot-Api-Secret-Token"
CUSTOM_HEADER = "X-Parley-Signature"
LINE_HEADER = "X-Line-Signature"
VIBER_HEADER = "X-Viber-Content-Signature"
TWILIO_HEADER = "X-Twilio-Signature"
DEFAULT_TOLERANCE_SECONDS = 300

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_TELEGRAM_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_UNIX_SECONDS = re.compile(r"^[0-9]{1,12}$")


class Verdict(enum.Enum):
    """The outcome of a check. Only VALID lets a webhook in; the others say why it was refused."""

    VALID = "valid"
    MISSING = "missing"  # no signature header
    MALFORMED = "malformed"  # the header is not of the expected form
    MISMATCH = "mismatch"  # well-formed, but not made with this secret over this body
    STALE = "stale"  # custom channel: the timestamp is outside the tolerance window

    @property
    def ok(self) -> bool:
        return self is Verdict.VALID


def _hmac_sha256(secret: str | bytes, message: bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).digest()


def verify_meta_signature(body: bytes, header: str | None, app_secret: str | bytes) -> Verdict:
    """Check Meta's `X-Hub-Signature-256` over the raw body with the app secret."""
    if not header:
        return Verdict.MISSING
    scheme, _, signature = header.strip().partition("=")
    if scheme != "sha256" or not _HEX64.match(signature):
        return Verdict.MALFORMED
    expected = _hmac_sha256(app_secret, body)
    return Verdict.VALID if hmac.compare_digest(expected, bytes.fromhex(signature)) else Verdict.MISMATCH


def verify_telegram_secret(header: str | None, secret_token: str) -> Verdict:
    """Check Telegram's `X-Telegram-Bot-Api-Secret-Token` against the channel's secret token."""
    if not header:
        return Verdict.MISSING
    if not _TELEGRAM_TOKEN.match(header):
        return Verdict.MALFORMED
    return Verdict.VALID if hmac.compare_digest(header.encode(), secret_token.encode()) else Verdict.MISMATCH


def sign_twilio(url: str, params: Sequence[tuple[str, str]], auth_token: str) -> str:
    """The `X-Twilio-Signature` of a form POST to `url`: base64 HMAC-SHA1 of the URL followed by each field's name
    and value, sorted by name then value (a repeated name contributes each distinct value once, as Twilio's
    SDKs sign)."""
    message = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(auth_token.encode(), message.encode(), hashlib.sha1).digest()).decode()


def verify_twilio_signature(
    url: str, params: Sequence[tuple[str, str]], header: str | None, auth_token: str
) -> Verdict:
    """Check Twilio's `X-Twilio-Signature` of the form fields `params` posted to `url` with the account's auth
    token."""
    if not header:
        return Verdict.MISSING
    try:
        signature = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Verdict.MALFORMED
    if len(signature) != hashlib.sha1().digest_size:
        return Verdict.MALFORMED
    expected = base64.b64decode(sign_twilio(url, params, auth_token))
    return Verdict.VALID if hmac.compare_digest(expected, signature) else Verdict.MISMATCH


def sign_custom(body: bytes, secret: str | bytes, *, timestamp: int | None = None) -> str:
    """The `X-Parley-Signature` value for `body` at `timestamp` (now by default): `t=<unix>,v1=<hex>`."""
    moment = int(time.time()) if timestamp is None else timestamp
    signature = _hmac_sha256(secret, f"{moment}.".encode() + body).hex()
    return f"t={moment},v1={signature}"


def verify_custom_signature(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Verdict:
    """Check an `X-Parley-Signature` header: any `v1` must match and `t` be within `tolerance_seconds` of now."""
    if not header:
        return Verdict.MISSING
    moment, signatures = None, []
    for element in header.split(","):
        key, _, value = element.strip().partition("=")
        if key == "t" and moment is None and _UNIX_SECONDS.match(value):
            moment = value
        elif key == "v1" and _HEX64.match(value):
            signatures.append(bytes.fromhex(value))
    if moment is None or not signatures:
        return Verdict.MALFORMED
    expected = _hmac_sha256(secret, f"{moment}.".encode() + body)
    matched = False
    for signature in signatures:  # no early exit: the time taken does not depend on which entry matched
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        return Verdict.MISMATCH
    current = time.time() if now is None else now
    return Verdict.VALID if abs(current - int(moment)) <= tolerance_seconds else Verdict.STALE


def verify_line_signature(body: bytes, header: str | None, channel_secret: str) -> Verdict:
    """Check LINE's `X-Line-Signature` (base64 of HMAC-SHA256 over the raw body with the channel secret)."""
    if not header:
        return Verdict.MISSING
    try:
        signature = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Verdict.MALFORMED
    if len(signature) != hashlib.sha256().digest_size:
        return Verdict.MALFORMED
    expected = _hmac_sha256(channel_secret, body)
    return Verdict.VALID if hmac.compare_digest(expected, signature) else Verdict.MISMATCH


def verify_viber_signature(body: bytes, header: str | None, auth_token: str) -> Verdict:
    """Check Viber's `X-Viber-Content-Signature`: hex HMAC-SHA256 of the raw body keyed with the bot's auth token."""
    if not header:
        return Verdict.MISSING
    if not _HEX64.match(header.strip()):
        return Verdict.MALFORMED
    expected = _hmac_sha256(auth_token, body)
    return Verdict.VALID if hmac.compare_digest(expected, bytes.fromhex(header.strip())) else Verdict.MISMATCH
