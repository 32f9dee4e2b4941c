"""Channel messaging windows: whether a reply may be sent now, and why not.

- Messenger and Instagram: 24 hours after the contact's last message; with the HUMAN_AGENT tag,
  7 days. Other tags (Messenger only) follow Meta's own rules and are checked by Meta.
- WhatsApp: 24 hours after the contact's last message (the customer service window); outside it,
  only a template message may be sent.
- Telegram and custom channels: no window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from parley_kit.errors import FailedPrecondition

STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)

MESSENGER = "messenger"
INSTAGRAM = "instagram"
WHATSAPP = "whatsapp"
TELEGRAM = "telegram"
CUSTOM = "custom"

HUMAN_AGENT = "human_agent"
_MESSENGER_ONLY_TAGS = {"confirmed_event_update", "post_purchase_update", "account_update"}


@dataclass(frozen=True)
class Outgoing:
    """What a reply carries, as far as the window rules care."""

    channel_type: str
    tag: str | None = None
    is_template: bool = False


def check_window(out: Outgoing, last_inbound_at: datetime | None, now: datetime) -> None:
    """Raise FailedPrecondition, naming the rule, when the reply may not be sent now."""
    kind = out.channel_type
    if kind in (MESSENGER, INSTAGRAM):
        if out.is_template:
            raise FailedPrecondition(f"template messages are for WhatsApp; {kind} replies send text or attachments")
        if out.tag in _MESSENGER_ONLY_TAGS:
            if kind == INSTAGRAM:
                raise FailedPrecondition(f"Instagram accepts only the HUMAN_AGENT tag, not {out.tag.upper()}")
            return  # Meta checks the use of these tags itself
        window = HUMAN_AGENT_WINDOW if out.tag == HUMAN_AGENT else STANDARD_WINDOW
        if last_inbound_at is None:
            raise FailedPrecondition(
                f"{kind} allows replies only after the contact has written; this contact never wrote on this channel"
            )
        elapsed = now - last_inbound_at
        if elapsed > window:
            if out.tag == HUMAN_AGENT:
                reason = (
                    f"outside {kind}'s 7-day human agent window: the contact last wrote {_ago(elapsed)} ago "
                    f"({last_inbound_at.isoformat()})"
                )
            else:
                reason = (
                    f"outside {kind}'s 24-hour messaging window: the contact last wrote {_ago(elapsed)} ago "
                    f"({last_inbound_at.isoformat()}); a human agent may still answer within 7 days with the "
                    "HUMAN_AGENT tag"
                )
            raise FailedPrecondition(reason)
        return
    if kind == WHATSAPP:
        if out.tag:
            raise FailedPrecondition("WhatsApp does not use message tags; outside the 24-hour window send a template")
        if out.is_template:
            return
        if last_inbound_at is None or now - last_inbound_at > STANDARD_WINDOW:
            when = (
                "the contact never wrote on this number"
                if last_inbound_at is None
                else f"the contact last wrote {_ago(now - last_inbound_at)} ago ({last_inbound_at.isoformat()})"
            )
            raise FailedPrecondition(
                f"outside WhatsApp's 24-hour customer service window ({when}); only an approved template "
                "message may be sent"
            )
        return
    if out.is_template:
        raise FailedPrecondition(f"template messages are for WhatsApp, not {kind}")
    if out.tag:
        raise FailedPrecondition(f"message tags are for Messenger and Instagram, not {kind}")


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"
