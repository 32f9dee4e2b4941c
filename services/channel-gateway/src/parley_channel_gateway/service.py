"""Channel connections: connect, list, get, update, disconnect, health. Knows nothing of protobuf or gRPC."""

from __future__ import annotations

import base64
import logging
import re
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from parley_kit.db import transaction
from parley_kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.models import ACTIVE, DISCONNECTED, ChannelRow
from parley_channel_gateway.outbound_twilio_sms import account_path
from parley_channel_gateway.outbound_viber import EVENT_TYPES as VIBER_EVENTS
from parley_channel_gateway.providers import ProviderError, Providers
from parley_channel_gateway.repository import Repository

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("messenger", "instagram", "whatsapp", "telegram", "custom", "line", "viber", "twilio_sms")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

_NUMERIC_ID = re.compile(r"^[0-9]{1,32}$")
_META_TOKEN = re.compile(r"^[A-Za-z0-9_\-.|]{20,2048}$")
_BOT_TOKEN = re.compile(r"^([0-9]{1,20}):[A-Za-z0-9_-]{30,64}$")
_LINE_SECRET = re.compile(r"^[0-9a-f]{32}$")
_LINE_TOKEN = re.compile(r"^[A-Za-z0-9+/=._-]{20,2048}$")
_VIBER_TOKEN = re.compile(r"^[A-Za-z0-9-]{20,128}$")
_TWILIO_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_TWILIO_AUTH_TOKEN = re.compile(r"^[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ACCOUNT_WORDS = {
    "messenger": "Facebook Page",
    "instagram": "Instagram account",
    "whatsapp": "WhatsApp phone number",
    "telegram": "Telegram bot",
    "line": "LINE Official Account",
    "viber": "Viber bot",
    "twilio_sms": "Twilio phone number",
}


@dataclass(frozen=True)
class Credentials:
    """What a caller gives to connect (or re-credential) a channel, already shape-checked."""

    type: str
    external_id: str | None = None
    access_token: str = ""
    account_detail: str = ""
    webhook_url: str = ""
    secret: str = ""  # LINE: the channel secret


def _numeric(value: str, field: str) -> str:
    value = value.strip()
    if not _NUMERIC_ID.match(value):
        raise InvalidArgument(f"{field} must be the provider's numeric id (digits only), got {value[:40]!r}")
    return value


def _meta_token(value: str, field: str) -> str:
    if not _META_TOKEN.match(value):
        raise InvalidArgument(
            f"{field} does not look like a Meta access token (20 to 2048 letters, digits and _-.| without spaces)"
        )
    return value


def _webhook_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2048:
        raise InvalidArgument("outbound_webhook_url must be an absolute http(s) URL, e.g. https://example.com/parley")
    if parts.username or parts.password:
        raise InvalidArgument("outbound_webhook_url must not carry credentials; the gateway signs each request")
    return value


def validate_credentials(type_: str, fields: dict[str, str]) -> Credentials:
    """Check the credentials' shape for `type_` (INVALID_ARGUMENT naming the field and what it should be)."""
    if type_ == "messenger":
        return Credentials(
            type_,
            _numeric(fields.get("page_id", ""), "messenger.page_id"),
            _meta_token(fields.get("page_access_token", ""), "messenger.page_access_token"),
        )
    if type_ == "instagram":
        return Credentials(
            type_,
            _numeric(fields.get("ig_account_id", ""), "instagram.ig_account_id"),
            _meta_token(fields.get("access_token", ""), "instagram.access_token"),
        )
    if type_ == "whatsapp":
        return Credentials(
            type_,
            _numeric(fields.get("phone_number_id", ""), "whatsapp.phone_number_id"),
            _meta_token(fields.get("access_token", ""), "whatsapp.access_token"),
            account_detail=_numeric(fields.get("waba_id", ""), "whatsapp.waba_id"),
        )
    if type_ == "telegram":
        token = fields.get("bot_token", "").strip()
        match = _BOT_TOKEN.match(token)
        if not match:
            raise InvalidArgument(
                "telegram.bot_token must be the token BotFather gave: '<bot id>:<35-character secret>'"
            )
        return Credentials(type_, match.group(1), token)
    if type_ == "custom":
        return Credentials(type_, None, webhook_url=_webhook_url(fields.get("outbound_webhook_url", "")))
    if type_ == "line":  # the account id (the bot's user id) comes from LINE at connect
        secret = fields.get("channel_secret", "").strip()
        if not _LINE_SECRET.match(secret):
            raise InvalidArgument("line.channel_secret must be the channel secret: 32 lowercase hexadecimal digits")
        token = fields.get("channel_access_token", "").strip()
        if not _LINE_TOKEN.match(token):
            raise InvalidArgument(
                "line.channel_access_token does not look like a LINE channel access token (20 to 2048 letters, "
                "digits and +/=._- without spaces)"
            )
        return Credentials(type_, None, token, secret=secret)
    if type_ == "viber":
        token = fields.get("auth_token", "").strip()
        if not _VIBER_TOKEN.match(token):
            raise InvalidArgument(
                "viber.auth_token must be the bot's authentication token (its 'app key', e.g. "
                "'4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f')"
            )
        return Credentials(type_, None, token)  # the account id comes from Viber's get_account_info
    if type_ == "twilio_sms":
        account_sid = fields.get("account_sid", "").strip()
        if not _TWILIO_ACCOUNT_SID.match(account_sid):
            raise InvalidArgument("twilio_sms.account_sid must be the Twilio account SID: 'AC' and 32 hex digits")
        token = fields.get("auth_token", "").strip()
        if not _TWILIO_AUTH_TOKEN.match(token):
            raise InvalidArgument("twilio_sms.auth_token must be the account's auth token: 32 hex digits")
        phone = fields.get("phone_number", "").strip()
        if not _E164.match(phone):
            raise InvalidArgument(f"twilio_sms.phone_number must be in E.164, e.g. +14155550100, got {phone[:40]!r}")
        return Credentials(type_, phone, token, account_detail=account_sid)
    raise InvalidArgument(f"channel type must be one of {', '.join(CHANNEL_TYPES)}")


def _hint(token: str) -> str:
    return f"…{token[-4:]}" if len(token) >= 12 else ""


@dataclass(frozen=True)
class Page:
    channels: list[ChannelRow]
    next_token: str
    total: int


@dataclass(frozen=True)
class Connected:
    channel: ChannelRow
    webhook_secret: str = ""


class ChannelService:
    def __init__(self, repo: Repository, box: SecretBox, providers: Providers, public_url: str) -> None:
        self.repo = repo
        self.box = box
        self.providers = providers
        self.public_url = public_url.rstrip("/")

    def inbound_url(self, channel: ChannelRow) -> str:
        if channel.type in ("telegram", "custom", "line", "viber", "twilio_sms"):
            return f"{self.public_url}/webhooks/{channel.type}/{channel.id}"
        return f"{self.public_url}/webhooks/{channel.type}"

    def secrets_of(self, channel: ChannelRow) -> dict[str, Any]:
        return self.box.open(channel.secrets)

    # -- connect ------------------------------------------------------------------------------------------------

    async def connect(self, space_id: str, name: str, creds: Credentials) -> Connected:
        channel_id = str(uuid.uuid4())
        viber_name = ""
        if creds.type == "viber":
            account_id, viber_name = await self._viber_account(creds.access_token)
            creds = replace(creds, external_id=account_id, account_detail=viber_name)
        stored: dict[str, Any] = {}
        webhook_secret = ""
        if creds.access_token:
            stored["access_token"] = creds.access_token
        if creds.type == "custom":
            webhook_secret = secrets.token_urlsafe(32)
            stored["webhook_secret"] = webhook_secret
        if creds.type == "telegram":
            stored["secret_token"] = secrets.token_urlsafe(32)
        if creds.type == "line":
            stored["channel_secret"] = creds.secret
            creds = await self._line_account(creds)
        now = datetime.now(UTC)
        row = ChannelRow(
            id=channel_id,
            space_id=space_id,
            type=creds.type,
            name=(name.strip() or viber_name or creds.external_id or f"custom channel {channel_id[:8]}")[:200],
            external_id=creds.external_id,
            status=ACTIVE,
            account_detail=creds.account_detail,
            outbound_webhook_url=creds.webhook_url,
            credential_hint=_hint(creds.access_token),
            secrets=self.box.seal(stored),
            created_at=now,
            updated_at=now,
            last_error_code="",
            last_error_message="",
            consecutive_failures=0,
        )
        word = _ACCOUNT_WORDS.get(creds.type, "account")
        duplicate = (
            f"this {word} ({creds.external_id}) is already connected to a Parley space; disconnect it there first"
        )
        async with transaction(self.repo.sessions) as session:
            await self.repo.insert_channel(session, row, duplicate)
            if creds.type == "telegram":
                # Inside the transaction: a bot Telegram refuses is never stored.
                row.account_detail = await self._register_telegram(row, stored)
            if creds.type == "line":
                await self._register_line(row, creds.access_token)
            if creds.type == "viber":
                # Inside the transaction too. Viber checks the URL with a `webhook` callback before it answers,
                # which the web process answers without looking the (not yet committed) channel up.
                await self._register_viber(row, creds.access_token)
            if creds.type == "twilio_sms":
                await self._register_twilio(row, stored)
        return Connected(row, webhook_secret)

    async def _viber_account(self, token: str) -> tuple[str, str]:
        """get_account_info: the bot's account id and name (the token works)."""
        info = await self._viber_call(token, "get_account_info", {})
        account_id = info.get("id")
        if not isinstance(account_id, str) or not account_id:
            raise Unavailable("Viber's get_account_info answered without an account id; try again")
        name = info.get("name")
        return account_id[:128], name if isinstance(name, str) else ""

    async def _register_viber(self, row: ChannelRow, token: str) -> None:
        """set_webhook with the channel's URL and the callbacks Parley maps; Viber sends name and avatar."""
        body = {"url": self.inbound_url(row), "event_types": list(VIBER_EVENTS), "send_name": True, "send_photo": True}
        await self._viber_call(token, "set_webhook", body)

    async def _viber_call(self, token: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.providers.viber(token, method, body)
        except ProviderError as exc:
            if exc.retryable:
                raise Unavailable(f"Viber is unreachable or busy ({exc.message}); try again") from None
            raise InvalidArgument(f"Viber refused {method}: {exc.message} (status {exc.code})") from None

    async def _register_telegram(self, row: ChannelRow, stored: dict[str, Any]) -> str:
        """getMe (the token works), then setWebhook with the channel's URL and secret token; returns @username."""
        token = stored["access_token"]
        try:
            me = await self.providers.telegram(token, "getMe", {})
            await self.providers.telegram(
                token,
                "setWebhook",
                {
                    "url": self.inbound_url(row),
                    "secret_token": stored["secret_token"],
                    "allowed_updates": ["message", "edited_message", "callback_query", "my_chat_member"],
                },
            )
        except ProviderError as exc:
            if exc.retryable:
                raise Unavailable(f"Telegram is unreachable or busy ({exc.message}); try again") from None
            raise InvalidArgument(f"Telegram refused the bot token: {exc.message} (error {exc.code})") from None
        username = me.get("username")
        return f"@{username}" if isinstance(username, str) and username else ""

    async def _line_account(self, creds: Credentials) -> Credentials:
        """The credentials with the bot's user id (the `destination` of its webhooks) and @basic id from LINE."""
        try:
            bot = await self.providers.line(creds.access_token, "GET", "/v2/bot/info")
        except ProviderError as exc:
            if exc.retryable:
                raise Unavailable(f"LINE is unreachable or busy ({exc.message}); try again") from None
            raise InvalidArgument(f"LINE refused the channel access token: {exc.message} ({exc.code})") from None
        user_id, basic_id = str(bot.get("userId") or ""), str(bot.get("basicId") or "")
        if not user_id:
            raise Unavailable("LINE's bot info has no userId; try again")
        return Credentials("line", user_id, creds.access_token, account_detail=basic_id, secret=creds.secret)

    async def _register_line(self, row: ChannelRow, token: str) -> None:
        """Point the LINE channel's webhook URL at this channel's route (LINE wants an https URL)."""
        try:
            await self.providers.line(
                token, "PUT", "/v2/bot/channel/webhook/endpoint", {"endpoint": self.inbound_url(row)}
            )
        except ProviderError as exc:
            if exc.retryable:
                raise Unavailable(f"LINE is unreachable or busy ({exc.message}); try again") from None
            raise InvalidArgument(
                f"LINE refused the webhook URL {self.inbound_url(row)}: {exc.message} ({exc.code})"
            ) from None

    async def _register_twilio(self, row: ChannelRow, stored: dict[str, Any]) -> None:
        """Find the number on the account (the SID and token work, the number is theirs and SMS-capable), point its
        SmsUrl at the channel's webhook, and keep the number's SID (PN...) in the sealed secrets."""
        sid, token, number = row.account_detail, stored["access_token"], row.external_id or ""
        try:
            found = await self.providers.twilio(
                sid, token, account_path(sid, "IncomingPhoneNumbers.json"), query={"PhoneNumber": number}
            )
            numbers = [n for n in found.get("incoming_phone_numbers") or [] if isinstance(n, dict)]
            match = next((n for n in numbers if n.get("phone_number") == number), None)
            if match is None or not isinstance(match.get("sid"), str):
                raise InvalidArgument(f"{number} is not a phone number of Twilio account {sid}; buy or port it first")
            capabilities = match.get("capabilities") if isinstance(match.get("capabilities"), dict) else {}
            if capabilities.get("sms") is False:
                raise InvalidArgument(f"{number} cannot send or receive SMS (Twilio capabilities.sms is false)")
            stored["phone_number_sid"] = match["sid"]
            await self._set_twilio_sms_url(sid, token, match["sid"], self.inbound_url(row))
        except ProviderError as exc:
            if exc.retryable:
                raise Unavailable(f"Twilio is unreachable or busy ({exc.message}); try again") from None
            raise InvalidArgument(f"Twilio refused the credentials: {exc.message} (error {exc.code})") from None
        row.secrets = self.box.seal(stored)

    async def _set_twilio_sms_url(self, sid: str, token: str, number_sid: str, url: str) -> None:
        """Set (or clear, with "") the number's incoming message webhook."""
        path = account_path(sid, f"IncomingPhoneNumbers/{number_sid}.json")
        await self.providers.twilio(sid, token, path, [("SmsUrl", url), ("SmsMethod", "POST")])

    # -- read -------------------------------------------------------------------------------------------------------

    async def get(self, space_id: str, channel_id: str) -> ChannelRow:
        async with self.repo.sessions() as session:
            row = await self.repo.channel_in_space(session, space_id, channel_id)
        if row is None:
            raise NotFound(f"channel {channel_id} not found in this space")
        return row

    async def list(
        self, space_id: str, *, type_: str | None, include_disconnected: bool, page_size: int, page_token: str
    ) -> Page:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size must be between 1 and {MAX_PAGE_SIZE} (0 for the default {DEFAULT_PAGE_SIZE})"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        after = _decode_token(page_token) if page_token else None
        async with self.repo.sessions() as session:
            rows = await self.repo.list_channels(
                session, space_id, type_=type_, include_disconnected=include_disconnected, after=after, limit=size + 1
            )
            total = await self.repo.count_channels(
                session, space_id, type_=type_, include_disconnected=include_disconnected
            )
        more = len(rows) > size
        rows = rows[:size]
        next_token = _encode_token(rows[-1]) if more else ""
        return Page(rows, next_token, total)

    # -- update / disconnect ----------------------------------------------------------------------------------------

    async def update(
        self,
        space_id: str,
        channel_id: str,
        *,
        name: str | None,
        creds: Credentials | None,
        rotate_secret: bool,
    ) -> Connected:
        webhook_secret = ""
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.channel_in_space(session, space_id, channel_id, lock=True)
            if row is None:
                raise NotFound(f"channel {channel_id} not found in this space")
            if row.status != ACTIVE:
                raise FailedPrecondition(
                    "the channel is disconnected; connect the account again instead of updating it"
                )
            stored = self.box.open(row.secrets)
            telegram_changed = twilio_changed = False
            if name is not None:
                if not name.strip():
                    raise InvalidArgument("name must not be empty")
                row.name = name.strip()[:200]
            if creds is not None:
                if creds.type != row.type:
                    raise InvalidArgument(f"this is a {row.type} channel; give {row.type} credentials")
                if creds.type == "line":
                    stored["channel_secret"] = creds.secret
                    creds = await self._line_account(creds)
                if creds.type == "viber":
                    account_id, viber_name = await self._viber_account(creds.access_token)
                    creds = replace(creds, external_id=account_id, account_detail=viber_name)
                if creds.external_id != row.external_id:
                    raise InvalidArgument(
                        f"credentials are for account {creds.external_id}, but this channel is account "
                        f"{row.external_id}; connect a new channel for another account"
                    )
                if creds.access_token:
                    stored["access_token"] = creds.access_token
                    row.credential_hint = _hint(creds.access_token)
                    telegram_changed = row.type == "telegram"
                    twilio_changed = row.type == "twilio_sms"
                if creds.account_detail:
                    row.account_detail = creds.account_detail
                if creds.webhook_url:
                    row.outbound_webhook_url = creds.webhook_url
            if rotate_secret:
                if row.type == "custom":
                    webhook_secret = secrets.token_urlsafe(32)
                    stored["webhook_secret"] = webhook_secret
                elif row.type == "telegram":
                    stored["secret_token"] = secrets.token_urlsafe(32)
                    telegram_changed = True
                elif row.type == "line":
                    raise InvalidArgument(
                        "LINE issues the channel secret: reissue it in the LINE Developers console, then update the "
                        "channel with line.channel_secret and line.channel_access_token"
                    )
                else:
                    raise InvalidArgument(
                        "only custom and Telegram channels have a webhook secret; Meta channels are signed with the "
                        "app secret, Viber's with the auth token, Twilio SMS with the account's auth token (give the "
                        "new token as credentials)"
                    )
            row.secrets = self.box.seal(stored)
            row.updated_at = datetime.now(UTC)
            if telegram_changed:
                account = await self._register_telegram(row, stored)
                row.account_detail = account or row.account_detail
            if creds is not None and creds.type == "viber":
                await self._register_viber(row, creds.access_token)
            if twilio_changed:
                await self._register_twilio(row, stored)
        return Connected(row, webhook_secret)

    async def disconnect(self, space_id: str, channel_id: str) -> ChannelRow:
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.channel_in_space(session, space_id, channel_id, lock=True)
            if row is None:
                raise NotFound(f"channel {channel_id} not found in this space")
            if row.status == DISCONNECTED:
                return row
            row.status = DISCONNECTED
            row.disconnected_at = row.updated_at = datetime.now(UTC)
            stored = self.box.open(row.secrets)
        if row.type == "telegram":
            try:
                await self.providers.telegram(stored["access_token"], "deleteWebhook", {})
            except (ProviderError, KeyError) as exc:
                log.warning("channel %s disconnected, but Telegram deleteWebhook failed: %s", row.id, exc)
        if row.type == "viber":
            try:
                await self.providers.viber(stored["access_token"], "set_webhook", {"url": ""})
            except (ProviderError, KeyError) as exc:
                log.warning("channel %s disconnected, but removing its Viber webhook failed: %s", row.id, exc)
        if row.type == "twilio_sms" and stored.get("phone_number_sid"):
            try:
                number_sid = stored["phone_number_sid"]
                await self._set_twilio_sms_url(row.account_detail, stored["access_token"], number_sid, "")
            except ProviderError as exc:
                log.warning("channel %s disconnected, but clearing the Twilio number's SmsUrl failed: %s", row.id, exc)
        return row


def _encode_token(row: ChannelRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, channel_id = raw.split("|", 1)
        return datetime.fromisoformat(created), channel_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service issued; start again without it") from None
