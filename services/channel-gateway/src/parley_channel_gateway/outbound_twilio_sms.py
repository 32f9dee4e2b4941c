"""Twilio Programmable Messaging, the sending side: the REST API paths, the form of a `Messages.json` request, and
the classification of Twilio's error answers (`{"code": 21211, "message": ..., "more_info": ..., "status": 400}`).

SMS carries text and, on MMS-capable numbers, up to 10 media URLs. It has no buttons, quick replies or templates:
those are refused (`unsupported_content`) rather than flattened into text whose replies would not come back as
postbacks.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from parley_channel_gateway.providers import InvalidContent, OutboundMessage, ProviderError, retry_after_header

API_VERSION = "2010-04-01"
MAX_BODY_CHARS = 1600  # Twilio refuses longer bodies (error 21617)
MAX_MEDIA = 10  # MediaUrl values per message
# Error codes that mean "try again later": 20429 Too Many Requests, 20500 internal error, 20503 service unavailable.
# Everything else is permanent, e.g. 20003 authentication, 21211 invalid To number, 21408 region not enabled,
# 21606 From not SMS-capable, 21608 unverified To (trial), 21610 recipient unsubscribed (replied STOP),
# 21612 unroutable, 21614 To not a mobile number, 21617 body too long.
RETRYABLE = frozenset({20429, 20500, 20503})
RATE_LIMITS = frozenset({20429})


def account_path(account_sid: str, resource: str) -> str:
    """The REST path of `resource` (e.g. "Messages.json") under the account."""
    return f"/{API_VERSION}/Accounts/{quote(account_sid, safe='')}/{resource}"


def twilio_sms_request(msg: OutboundMessage, *, from_number: str, status_callback: str) -> list[tuple[str, str]]:
    """The form fields of POST Messages.json: To, From, Body, one MediaUrl per attachment, StatusCallback."""
    if msg.template is not None:
        raise InvalidContent("template messages are WhatsApp's; SMS sends text and media")
    if msg.buttons or msg.quick_replies:
        raise InvalidContent("SMS has no buttons or quick replies; write the choices into the text instead")
    if len(msg.attachments) > MAX_MEDIA:
        raise InvalidContent(f"an MMS carries at most {MAX_MEDIA} media files")
    if any(not attachment.url for attachment in msg.attachments):
        raise InvalidContent("every attachment needs a public URL for Twilio to fetch")
    body = msg.text or "\n".join(a.caption for a in msg.attachments if a.caption)
    if not body and not msg.attachments:
        raise InvalidContent("nothing to send: give text or media")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidContent(f"an SMS body has at most {MAX_BODY_CHARS} characters, this one {len(body)}")
    fields = [("To", msg.contact_external_id), ("From", from_number)]
    if body:
        fields.append(("Body", body))
    fields += [("MediaUrl", attachment.url) for attachment in msg.attachments]
    if status_callback:
        fields.append(("StatusCallback", status_callback))
    return fields


def twilio_error(response: httpx.Response) -> ProviderError:
    """Classify a Twilio REST error answer: 429/20429 and 5xx are retried, everything else is permanent."""
    try:
        data = response.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    code = data.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    message = str(data.get("message") or response.reason_phrase or "error")
    rate_limited = response.status_code == 429 or code in RATE_LIMITS
    return ProviderError(
        str(code) if code is not None else f"http_{response.status_code}",
        message,
        retryable=rate_limited or response.status_code >= 500 or code in RETRYABLE,
        retry_after=retry_after_header(response.headers.get("Retry-After")),
        rate_limited=rate_limited,
        status=response.status_code,
    )
