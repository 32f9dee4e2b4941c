"""The providers' messaging windows: who may be messaged when, and how (pure rules, no I/O).

- Messenger: inside 24 hours of the contact's last message, `messaging_type=RESPONSE`. Outside, only with a
  message tag: HUMAN_AGENT within 7 days of that message; the non-promotional update tags
  (CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE, ACCOUNT_UPDATE) at any time. Else refused: `window_closed`.
- Instagram: the same 24 hours; outside, only HUMAN_AGENT within 7 days.
- WhatsApp: inside the 24-hour customer service window anything; outside, only template messages.
- Telegram and custom channels have no window.
An unknown last inbound time counts as outside every window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
HUMAN_AGENT = "HUMAN_AGENT"
UPDATE_TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE"})


class WindowClosed(Exception):
    """The provider's rules forbid this send now; `reason` is recorded on the send."""

    code = "window_closed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MetaDelivery:
    """How a Messenger/Instagram send goes out."""

    messaging_type: str  # RESPONSE or MESSAGE_TAG
    tag: str = ""


def _age(last_inbound_at: datetime | None, now: datetime) -> timedelta | None:
    return None if last_inbound_at is None else now - last_inbound_at


def meta_delivery(channel_type: str, tag: str, last_inbound_at: datetime | None, now: datetime) -> MetaDelivery:
    """The messaging type (and tag) for a Messenger or Instagram send, or WindowClosed."""
    age = _age(last_inbound_at, now)
    if age is not None and age <= STANDARD_WINDOW:
        return MetaDelivery("RESPONSE")
    since = "no message from the contact is known" if age is None else f"the contact last wrote {_human(age)} ago"
    if tag == HUMAN_AGENT:
        if age is not None and age <= HUMAN_AGENT_WINDOW:
            return MetaDelivery("MESSAGE_TAG", HUMAN_AGENT)
        raise WindowClosed(f"the HUMAN_AGENT tag allows replies within 7 days of the contact's last message; {since}")
    if tag in UPDATE_TAGS:
        if channel_type == "messenger":
            return MetaDelivery("MESSAGE_TAG", tag)
        raise WindowClosed(f"Instagram accepts only the HUMAN_AGENT tag outside the 24-hour window, not {tag}")
    hint = (
        "use the HUMAN_AGENT tag (within 7 days) for a person's reply"
        if channel_type == "instagram"
        else (
            "use the HUMAN_AGENT tag (within 7 days) for a person's reply, "
            "or an update tag for a non-promotional update"
        )
    )
    raise WindowClosed(f"outside the 24-hour messaging window ({since}); {hint}")


def whatsapp_allows(is_template: bool, last_inbound_at: datetime | None, now: datetime) -> None:
    """Raise WindowClosed for a free-form WhatsApp message outside the customer service window."""
    if is_template:
        return
    age = _age(last_inbound_at, now)
    if age is not None and age <= STANDARD_WINDOW:
        return
    since = "no message from the contact is known" if age is None else f"the contact last wrote {_human(age)} ago"
    raise WindowClosed(
        f"outside WhatsApp's 24-hour customer service window ({since}); only template messages may be sent"
    )


def _human(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"
