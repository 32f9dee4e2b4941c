"""Inbound parsing: provider webhook bodies to canonical `InboundEvent`s, and webhook signature checks.

Pure functions: no I/O. The HTTP layer verifies the signature over the raw body, calls the provider's
parser, resolves each item's channel (from `channel_keys`, or from the URL for Telegram, LINE, Twilio SMS and
custom channels), fills `space_id`, `channel_id` and `received_at`, and publishes with `event_id` as Nats-Msg-Id.
"""

from .custom import parse_custom
from .errors import InvalidEnvelope
from .instagram import parse_instagram
from .line import parse_line
from .messenger import parse_messenger
from .meta import parse_meta
from .model import ParsedItem
from .signatures import (
    Verdict,
    sign_custom,
    sign_twilio,
    verify_custom_signature,
    verify_line_signature,
    verify_meta_signature,
    verify_telegram_secret,
    verify_twilio_signature,
    verify_viber_signature,
)
from .telegram import parse_telegram
from .twilio_sms import parse_form, parse_twilio_sms
from .viber import parse_viber
from .whatsapp import parse_whatsapp

__all__ = [
    "InvalidEnvelope",
    "ParsedItem",
    "Verdict",
    "parse_custom",
    "parse_form",
    "parse_instagram",
    "parse_line",
    "parse_messenger",
    "parse_meta",
    "parse_telegram",
    "parse_twilio_sms",
    "parse_viber",
    "parse_whatsapp",
    "sign_custom",
    "sign_twilio",
    "verify_custom_signature",
    "verify_line_signature",
    "verify_meta_signature",
    "verify_telegram_secret",
    "verify_twilio_signature",
    "verify_viber_signature",
]
