"""The channels' messaging windows: whether a message may be sent to a contact now, and how (pure, no I/O).

One rule for every service: conversations refuses a reply before it is queued, the channel gateway decides
Meta's `messaging_type` and `tag` when it sends. `decide()` takes the channel type, the contact's last inbound
time on that channel, now, and the requested tag / template flag; it returns a `Verdict`.

- Messenger and Instagram: within 24 hours of the contact's last message anything goes out with
  `messaging_type=RESPONSE` (a requested tag is not needed then and is not sent). Outside it, only with a
  message tag (`messaging_type=MESSAGE_TAG`):
  - HUMAN_AGENT (both): a person's reply within 7 days of the contact's last message.
  - CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE, ACCOUNT_UPDATE (Messenger only; refused on Instagram inside
    the window too): non-promotional updates, with no time limit of Parley's; Meta judges their content.
  - No tag, or HUMAN_AGENT after 7 days: refused (`window_closed`). Templates are WhatsApp's (refused here).
- WhatsApp: free-form within 24 hours of the customer's last message (the customer service window); outside
  it, only a template message. WhatsApp has no message tags.
- Telegram and custom channels: no window; a tag or a template is refused.
An unknown last inbound time (the contact never wrote on the channel) is outside every window. A tag or
template the channel does not have is refused as `not_supported` whatever the time.

Source for the tags (Meta's documentation as searched in 2026-11):
- "Message Tags", https://developers.facebook.com/docs/messenger-platform/send-messages/message-tags/ :
  HUMAN_AGENT, "messages can be sent within 7 days after a user message" (Messenger and Instagram);
  CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE, ACCOUNT_UPDATE "not available for Instagram Messaging API",
  with no time limit (Meta restricts their content: non-promotional, for the stated use case).
- "Messenger Platform and IG Messaging API policy" (updated 2026-09-28),
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/policy/ : message tags,
  some Messenger-only, and the 7-day Human Agent tag are still described.
- "Send a utility message" (2026-03),
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages/utility-messages
  : templates for order, account and event updates, the update tags' use cases. Some vendors call those tags
  deprecated, but no removal date was found in Meta's documentation, so they stay allowed; should Meta refuse
  one, its error is recorded on the send like any provider refusal.
Not modelled: the standard window of up to 7 days Meta opens after a Click-to-Messenger/Direct ad (Parley does
not know the entry point; 24 hours is the safe side).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)

MESSENGER = "messenger"
INSTAGRAM = "instagram"
WHATSAPP = "whatsapp"
TELEGRAM = "telegram"
CUSTOM = "custom"
CHANNEL_TYPES = (MESSENGER, INSTAGRAM, WHATSAPP, TELEGRAM, CUSTOM)

HUMAN_AGENT = "HUMAN_AGENT"
UPDATE_TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE"})
"""Messenger only."""
TAGS = UPDATE_TAGS | {HUMAN_AGENT}

RESPONSE = "RESPONSE"
MESSAGE_TAG = "MESSAGE_TAG"

_NAMES = {MESSENGER: "Messenger", INSTAGRAM: "Instagram", WHATSAPP: "WhatsApp", TELEGRAM: "Telegram"}


class Refusal(StrEnum):
    WINDOW_CLOSED = "window_closed"
    """The channel's window forbids this message now (it may be allowed later, or with a tag / template)."""
    NOT_SUPPORTED = "not_supported"
    """The channel has no such tag or template, at any time."""


@dataclass(frozen=True)
class Verdict:
    """May the message go out now; if not, `refusal` and `reason` (for people) say why. For Messenger and
    Instagram, `messaging_type` (RESPONSE or MESSAGE_TAG) and `tag` are the Send API's fields."""

    refusal: Refusal | None = None
    reason: str = ""
    messaging_type: str = ""
    tag: str = ""

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def decide(
    channel_type: str, last_inbound_at: datetime | None, now: datetime, *, tag: str = "", is_template: bool = False
) -> Verdict:
    """The verdict for a message on `channel_type` (one of CHANNEL_TYPES; others have no window) whose contact
    last wrote at `last_inbound_at`. `tag` is a Meta message tag name in any case ("" for none)."""
    tag = tag.upper()
    name = _NAMES.get(channel_type, channel_type)
    if channel_type in (MESSENGER, INSTAGRAM):
        return _meta(channel_type, name, tag, is_template, last_inbound_at, now)
    if channel_type == WHATSAPP:
        if tag:
            return _no("WhatsApp does not use message tags; outside the 24-hour window send a template")
        if is_template or _within(last_inbound_at, now, STANDARD_WINDOW):
            return Verdict()
        return _closed(
            f"outside WhatsApp's 24-hour customer service window ({_since(last_inbound_at, now)}); only an approved "
            "template message may be sent"
        )
    if is_template:
        return _no(f"template messages are for WhatsApp, not {name}")
    if tag:
        return _no(f"message tags are for Messenger and Instagram, not {name}")
    return Verdict()


def _meta(kind: str, name: str, tag: str, is_template: bool, last: datetime | None, now: datetime) -> Verdict:
    if is_template:
        return _no(f"template messages are for WhatsApp; {name} replies send text, media or buttons")
    if tag and tag not in TAGS:
        return _no(f"unknown message tag {tag}; {name} knows {', '.join(sorted(TAGS))}")
    if tag in UPDATE_TAGS and kind == INSTAGRAM:
        return _no(f"Instagram accepts only the HUMAN_AGENT tag, not {tag}")
    if _within(last, now, STANDARD_WINDOW):
        return Verdict(messaging_type=RESPONSE)
    if tag in UPDATE_TAGS:
        return Verdict(messaging_type=MESSAGE_TAG, tag=tag)
    if tag == HUMAN_AGENT:
        if _within(last, now, HUMAN_AGENT_WINDOW):
            return Verdict(messaging_type=MESSAGE_TAG, tag=HUMAN_AGENT)
        return _closed(f"outside {name}'s 7-day human agent window ({_since(last, now)})")
    hint = "a person may still reply within 7 days with the HUMAN_AGENT tag"
    if kind == MESSENGER:
        hint += ", and a non-promotional update may use an update tag"
    return _closed(f"outside {name}'s 24-hour messaging window ({_since(last, now)}); {hint}")


def _within(last: datetime | None, now: datetime, window: timedelta) -> bool:
    return last is not None and now - last <= window


def _since(last: datetime | None, now: datetime) -> str:
    if last is None:
        return "the contact never wrote on this channel"
    hours = (now - last).total_seconds() / 3600
    ago = f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"
    return f"the contact last wrote {ago} ago, at {last.isoformat()}"


def _closed(reason: str) -> Verdict:
    return Verdict(refusal=Refusal.WINDOW_CLOSED, reason=reason)


def _no(reason: str) -> Verdict:
    return Verdict(refusal=Refusal.NOT_SUPPORTED, reason=reason)
