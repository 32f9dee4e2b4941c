"""Webhook signature checks and the custom channel signer."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from parley_channel_gateway.inbound import (
    Verdict,
    sign_custom,
    verify_custom_signature,
    verify_meta_signature,
    verify_telegram_secret,
)

BODY = b'{"object":"page","entry":[]}'
SECRET = "app-secret-0123456789"
GOOD = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (GOOD, Verdict.VALID),
        (GOOD.upper().replace("SHA256=", "sha256="), Verdict.VALID),  # hex case does not matter
        (None, Verdict.MISSING),
        ("", Verdict.MISSING),
        (GOOD.removeprefix("sha256="), Verdict.MALFORMED),
        ("sha1=" + "0" * 40, Verdict.MALFORMED),
        ("sha256=" + "z" * 64, Verdict.MALFORMED),
        ("sha256=" + "ab" * 31, Verdict.MALFORMED),
        ("sha256=" + "0" * 64, Verdict.MISMATCH),
    ],
)
def test_meta_signature(header, verdict):
    assert verify_meta_signature(BODY, header, SECRET) is verdict


def test_meta_signature_covers_every_byte():
    assert verify_meta_signature(BODY + b" ", GOOD, SECRET) is Verdict.MISMATCH
    assert verify_meta_signature(BODY, GOOD, SECRET + "x") is Verdict.MISMATCH
    assert verify_meta_signature(BODY, GOOD, SECRET.encode()).ok


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        ("s3cr3t_token-1", Verdict.VALID),
        (None, Verdict.MISSING),
        ("", Verdict.MISSING),
        ("s3cr3t token", Verdict.MALFORMED),
        ("x" * 257, Verdict.MALFORMED),
        ("s3cr3t_token-2", Verdict.MISMATCH),
    ],
)
def test_telegram_secret(header, verdict):
    assert verify_telegram_secret(header, "s3cr3t_token-1") is verdict


NOW = 1_735_726_000


def test_custom_round_trip():
    header = sign_custom(BODY, SECRET, timestamp=NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify_custom_signature(BODY, header, SECRET, now=NOW + 10) is Verdict.VALID
    assert sign_custom(BODY, SECRET, timestamp=NOW) == header


def test_custom_signature_is_over_timestamp_and_body():
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_custom(BODY, SECRET, timestamp=NOW) == f"t={NOW},v1={expected}"


def test_custom_default_timestamp_is_now():
    assert verify_custom_signature(BODY, sign_custom(BODY, SECRET), SECRET).ok


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
def test_custom_refuses_stale_or_future_timestamps(skew):
    header = sign_custom(BODY, SECRET, timestamp=NOW)
    assert verify_custom_signature(BODY, header, SECRET, now=NOW - skew) is Verdict.STALE
    assert verify_custom_signature(BODY, header, SECRET, now=NOW - skew, tolerance_seconds=20_000).ok


def test_custom_refuses_a_replayed_signature_with_a_new_timestamp():
    signature = sign_custom(BODY, SECRET, timestamp=NOW).split(",")[1]
    assert verify_custom_signature(BODY, f"t={NOW + 60},{signature}", SECRET, now=NOW + 60) is Verdict.MISMATCH


def test_custom_accepts_any_of_several_signatures():
    good = sign_custom(BODY, SECRET, timestamp=NOW)
    other = sign_custom(BODY, "old-secret", timestamp=NOW).split(",")[1]
    assert verify_custom_signature(BODY, f"{good},{other}", SECRET, now=NOW).ok
    assert verify_custom_signature(BODY, f"t={NOW},{other}", SECRET, now=NOW) is Verdict.MISMATCH


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (None, Verdict.MISSING),
        ("", Verdict.MISSING),
        ("v1=" + "0" * 64, Verdict.MALFORMED),
        (f"t={NOW}", Verdict.MALFORMED),
        (f"t=soon,v1={'0' * 64}", Verdict.MALFORMED),
        (f"t={NOW},v1=abc", Verdict.MALFORMED),
        (f"t={NOW},v0={'0' * 64}", Verdict.MALFORMED),
        (f"t={NOW},v1={'0' * 64}", Verdict.MISMATCH),
    ],
)
def test_custom_header_forms(header, verdict):
    assert verify_custom_signature(BODY, header, SECRET, now=NOW) is verdict
