"""Channel messaging windows (the kit's shared rule): replies outside them are refused with the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from parley_conversations.service import check_window
from parley_kit.errors import FailedPrecondition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("channel", ["messenger", "instagram"])
def test_meta_reply_within_24_hours_is_allowed(channel: str) -> None:
    check_window(channel, NOW - timedelta(hours=23, minutes=59), NOW)


@pytest.mark.parametrize("channel", ["messenger", "instagram"])
def test_meta_reply_after_24_hours_is_refused_with_the_reason(channel: str) -> None:
    with pytest.raises(FailedPrecondition, match=r"24-hour messaging window.*HUMAN_AGENT"):
        check_window(channel, NOW - timedelta(hours=25), NOW)


@pytest.mark.parametrize("channel", ["messenger", "instagram"])
def test_human_agent_tag_extends_meta_window_to_7_days(channel: str) -> None:
    check_window(channel, NOW - timedelta(days=6, hours=23), NOW, tag="human_agent")
    with pytest.raises(FailedPrecondition, match="7-day human agent window"):
        check_window(channel, NOW - timedelta(days=7, minutes=1), NOW, tag="human_agent")


def test_meta_reply_to_a_contact_who_never_wrote_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="never wrote"):
        check_window("messenger", None, NOW)


def test_instagram_refuses_messenger_only_tags() -> None:
    with pytest.raises(FailedPrecondition, match="HUMAN_AGENT"):
        check_window("instagram", NOW - timedelta(days=3), NOW, tag="account_update")


def test_whatsapp_text_outside_24_hours_is_refused_but_template_is_allowed() -> None:
    with pytest.raises(FailedPrecondition, match="only an approved template"):
        check_window("whatsapp", NOW - timedelta(hours=30), NOW)
    check_window("whatsapp", NOW - timedelta(days=30), NOW, is_template=True)
    check_window("whatsapp", NOW - timedelta(hours=2), NOW)


def test_whatsapp_refuses_message_tags() -> None:
    with pytest.raises(FailedPrecondition, match="does not use message tags"):
        check_window("whatsapp", NOW - timedelta(hours=1), NOW, tag="human_agent")


@pytest.mark.parametrize("channel", ["telegram", "custom"])
def test_telegram_and_custom_have_no_window(channel: str) -> None:
    check_window(channel, NOW - timedelta(days=400), NOW)
    check_window(channel, None, NOW)
