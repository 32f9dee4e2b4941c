"""The shared messaging-window rule: every channel, time since the contact's last message, tag and template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from parley_kit.contracts import messaging_window as mw

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

# The contact's last message: inside 24 h, after 24 h but inside 7 days, after 7 days, never.
AGES = (timedelta(hours=1), timedelta(hours=30), timedelta(days=8), None)
# What the message asks for: nothing, the HUMAN_AGENT tag, a Messenger update tag, a WhatsApp template.
REQUESTS = {
    "plain": {},
    "human_agent": {"tag": "HUMAN_AGENT"},
    "update_tag": {"tag": "POST_PURCHASE_UPDATE"},
    "template": {"is_template": True},
}
# Outcomes: RESPONSE / HUMAN_AGENT / UPDATE (allowed, with Meta's messaging_type and tag), OK (allowed, no Meta
# fields), CLOSED (window_closed), NO (not_supported).
RESPONSE, HUMAN_AGENT, UPDATE, OK, CLOSED, NO = "RESPONSE", "HUMAN_AGENT", "UPDATE", "OK", "CLOSED", "NO"
NEVER = (NO, NO, NO, NO)
TABLE = {
    ("messenger", "plain"): (RESPONSE, CLOSED, CLOSED, CLOSED),
    ("messenger", "human_agent"): (RESPONSE, HUMAN_AGENT, CLOSED, CLOSED),
    ("messenger", "update_tag"): (RESPONSE, UPDATE, UPDATE, UPDATE),
    ("messenger", "template"): NEVER,
    ("instagram", "plain"): (RESPONSE, CLOSED, CLOSED, CLOSED),
    ("instagram", "human_agent"): (RESPONSE, HUMAN_AGENT, CLOSED, CLOSED),
    ("instagram", "update_tag"): NEVER,
    ("instagram", "template"): NEVER,
    ("whatsapp", "plain"): (OK, CLOSED, CLOSED, CLOSED),
    ("whatsapp", "human_agent"): NEVER,
    ("whatsapp", "update_tag"): NEVER,
    ("whatsapp", "template"): (OK, OK, OK, OK),
    ("telegram", "plain"): (OK, OK, OK, OK),
    ("telegram", "human_agent"): NEVER,
    ("telegram", "update_tag"): NEVER,
    ("telegram", "template"): NEVER,
    ("custom", "plain"): (OK, OK, OK, OK),
    ("custom", "human_agent"): NEVER,
    ("custom", "update_tag"): NEVER,
    ("custom", "template"): NEVER,
}
EXPECTED = {
    RESPONSE: (None, "RESPONSE", ""),
    HUMAN_AGENT: (None, "MESSAGE_TAG", "HUMAN_AGENT"),
    UPDATE: (None, "MESSAGE_TAG", "POST_PURCHASE_UPDATE"),
    OK: (None, "", ""),
    CLOSED: (mw.Refusal.WINDOW_CLOSED, "", ""),
    NO: (mw.Refusal.NOT_SUPPORTED, "", ""),
}
CASES = [
    pytest.param(channel, request, age, outcome, id=f"{channel}-{request}-{'never' if age is None else age}")
    for (channel, request), outcomes in TABLE.items()
    for age, outcome in zip(AGES, outcomes, strict=True)
]


def test_the_table_covers_every_channel_and_request() -> None:
    assert {c for c, _ in TABLE} == set(mw.CHANNEL_TYPES)
    assert {r for _, r in TABLE} == set(REQUESTS)


@pytest.mark.parametrize(("channel", "request_kind", "age", "outcome"), CASES)
def test_verdict(channel: str, request_kind: str, age: timedelta | None, outcome: str) -> None:
    last = None if age is None else NOW - age
    verdict = mw.decide(channel, last, NOW, **REQUESTS[request_kind])
    assert (verdict.refusal, verdict.messaging_type, verdict.tag) == EXPECTED[outcome]
    assert verdict.allowed == (verdict.refusal is None)
    assert bool(verdict.reason) == (not verdict.allowed)


@pytest.mark.parametrize("channel", ["messenger", "instagram", "whatsapp"])
def test_the_24_hour_window_includes_its_last_instant(channel: str) -> None:
    assert mw.decide(channel, NOW - timedelta(hours=24), NOW).allowed
    assert not mw.decide(channel, NOW - timedelta(hours=24, seconds=1), NOW).allowed


@pytest.mark.parametrize("channel", ["messenger", "instagram"])
def test_the_human_agent_window_includes_its_last_instant(channel: str) -> None:
    assert mw.decide(channel, NOW - timedelta(days=7), NOW, tag="HUMAN_AGENT").tag == "HUMAN_AGENT"
    closed = mw.decide(channel, NOW - timedelta(days=7, seconds=1), NOW, tag="HUMAN_AGENT")
    assert closed.refusal is mw.Refusal.WINDOW_CLOSED and "7-day human agent window" in closed.reason


def test_tags_are_read_in_any_case_and_unknown_tags_are_refused() -> None:
    assert mw.decide("messenger", NOW - timedelta(days=2), NOW, tag="human_agent").tag == "HUMAN_AGENT"
    unknown = mw.decide("messenger", NOW - timedelta(hours=1), NOW, tag="CUSTOMER_FEEDBACK")
    assert unknown.refusal is mw.Refusal.NOT_SUPPORTED and "unknown message tag CUSTOMER_FEEDBACK" in unknown.reason


def test_reasons_name_the_rule_and_the_way_out() -> None:
    messenger = mw.decide("messenger", NOW - timedelta(hours=30), NOW).reason
    assert "24-hour messaging window" in messenger and "30.0 hours ago" in messenger
    assert "HUMAN_AGENT" in messenger and "update tag" in messenger
    assert "update tag" not in mw.decide("instagram", NOW - timedelta(hours=30), NOW).reason
    assert "never wrote" in mw.decide("instagram", None, NOW).reason
    assert "only an approved template" in mw.decide("whatsapp", NOW - timedelta(days=3), NOW).reason
    assert (
        "Instagram accepts only the HUMAN_AGENT tag" in mw.decide("instagram", None, NOW, tag="ACCOUNT_UPDATE").reason
    )
