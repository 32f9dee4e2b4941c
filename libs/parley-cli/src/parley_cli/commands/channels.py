"""`parley channels ...`: connect, list, show, disconnect channels and see their health (ChannelService)."""

from __future__ import annotations

from typing import Any

import click
from parley.channel_gateway.v1 import channel_service_pb2 as pb
from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.common.v1 import common_pb2

from parley_cli.common import call, command, emit, json_option, to_dict, token_option

SERVICE = "channel-gateway"
TYPES = ["messenger", "instagram", "whatsapp", "telegram", "custom", "line", "viber", "twilio_sms"]
COLUMNS = ["channel_id", "type", "name", "external_id", "status", "inbound_webhook_url"]
_TYPE_VALUES = {name: getattr(common_pb2, f"CHANNEL_TYPE_{name.upper()}") for name in TYPES}


def space_option(fn: Any) -> Any:
    return click.option(
        "--space", "space_id", default="", envvar="PARLEY_SPACE", help="Space id (required with a platform token)."
    )(fn)


def _row(channel: pb.Channel) -> dict[str, Any]:
    data = to_dict(channel)
    data["type"] = common_pb2.ChannelType.Name(channel.type).removeprefix("CHANNEL_TYPE_").lower()
    data["status"] = pb.ChannelStatus.Name(channel.status).removeprefix("CHANNEL_STATUS_").lower()
    return data


async def _rpc(method: str, request: Any, token_value: str | None) -> Any:
    return await call(SERVICE, pb_grpc.ChannelServiceStub, method, request, token_value=token_value)


@click.group()
def channels() -> None:
    """Messaging channels of a space: Messenger, Instagram, WhatsApp, Telegram, custom, LINE, Viber, Twilio SMS."""


# -- connect --


@channels.group()
def connect() -> None:
    """Connect a channel. Secrets are prompted for (hidden) unless given by option or environment."""


async def _connect(request: pb.ConnectChannelRequest, as_json: bool, token_value: str | None) -> None:
    reply: pb.ConnectChannelResponse = await _rpc("ConnectChannel", request, token_value)
    data = _row(reply.channel)
    if reply.webhook_secret:
        data["webhook_secret"] = reply.webhook_secret
    if as_json:
        emit(data, True)
        return
    emit(data, False, COLUMNS)
    if reply.webhook_secret:
        click.echo(f"\nwebhook secret (shown once, store it now): {reply.webhook_secret}")


def _common(fn: Any) -> Any:
    for decorator in (
        space_option,
        click.option("--name", default="", help="A name people recognise the channel by."),
        json_option,
        token_option,
    ):
        fn = decorator(fn)
    return fn


@connect.command("messenger")
@click.option("--page-id", required=True, help="The Facebook Page id.")
@click.option("--page-access-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_PAGE_ACCESS_TOKEN")
@_common
@command
async def connect_messenger(page_id: str, page_access_token: str, space_id: str, name: str, as_json: bool,
                            token_value: str | None) -> None:  # fmt: skip
    """Connect a Facebook Page."""
    creds = pb.MessengerCredentials(page_id=page_id, page_access_token=page_access_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, messenger=creds), as_json, token_value)


@connect.command("instagram")
@click.option("--account-id", required=True, help="The Instagram professional account id.")
@click.option("--access-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_ACCESS_TOKEN")
@_common
@command
async def connect_instagram(account_id: str, access_token: str, space_id: str, name: str, as_json: bool,
                            token_value: str | None) -> None:  # fmt: skip
    """Connect an Instagram account."""
    creds = pb.InstagramCredentials(ig_account_id=account_id, access_token=access_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, instagram=creds), as_json, token_value)


@connect.command("whatsapp")
@click.option("--phone-number-id", required=True, help="The WhatsApp Cloud API phone_number_id.")
@click.option("--waba-id", required=True, help="The WhatsApp Business Account id.")
@click.option("--access-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_ACCESS_TOKEN")
@_common
@command
async def connect_whatsapp(phone_number_id: str, waba_id: str, access_token: str, space_id: str, name: str,
                           as_json: bool, token_value: str | None) -> None:  # fmt: skip
    """Connect a WhatsApp phone number."""
    creds = pb.WhatsAppCredentials(phone_number_id=phone_number_id, waba_id=waba_id, access_token=access_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, whatsapp=creds), as_json, token_value)


@connect.command("telegram")
@click.option("--bot-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_BOT_TOKEN")
@_common
@command
async def connect_telegram(bot_token: str, space_id: str, name: str, as_json: bool, token_value: str | None) -> None:
    """Connect a Telegram bot (the gateway registers its webhook with Telegram)."""
    creds = pb.TelegramCredentials(bot_token=bot_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, telegram=creds), as_json, token_value)


@connect.command("custom")
@click.option("--webhook-url", required=True, help="Your https URL that receives outbound messages, signed.")
@_common
@command
async def connect_custom(webhook_url: str, space_id: str, name: str, as_json: bool, token_value: str | None) -> None:
    """Connect your own app or website; prints the webhook secret once."""
    config = pb.CustomChannelConfig(outbound_webhook_url=webhook_url)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, custom=config), as_json, token_value)


@connect.command("line")
@click.option("--channel-secret", required=True, prompt=True, hide_input=True, envvar="PARLEY_LINE_CHANNEL_SECRET")
@click.option(
    "--channel-access-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_LINE_CHANNEL_ACCESS_TOKEN"
)
@_common
@command
async def connect_line(channel_secret: str, channel_access_token: str, space_id: str, name: str, as_json: bool,
                       token_value: str | None) -> None:  # fmt: skip
    """Connect a LINE Official Account's Messaging API channel (the gateway sets its webhook URL with LINE)."""
    creds = pb.LineCredentials(channel_secret=channel_secret, channel_access_token=channel_access_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, line=creds), as_json, token_value)


@connect.command("viber")
@click.option("--auth-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_VIBER_AUTH_TOKEN")
@_common
@command
async def connect_viber(auth_token: str, space_id: str, name: str, as_json: bool, token_value: str | None) -> None:
    """Connect a Viber bot by its authentication token (the gateway registers its webhook with Viber)."""
    creds = pb.ViberCredentials(auth_token=auth_token)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, viber=creds), as_json, token_value)


@connect.command("twilio-sms")
@click.option("--account-sid", required=True, help="The Twilio account SID (AC...).")
@click.option("--phone-number", required=True, help="The Twilio number in E.164, e.g. +14155550100.")
@click.option("--auth-token", required=True, prompt=True, hide_input=True, envvar="PARLEY_TWILIO_AUTH_TOKEN")
@_common
@command
async def connect_twilio_sms(account_sid: str, phone_number: str, auth_token: str, space_id: str, name: str,
                             as_json: bool, token_value: str | None) -> None:  # fmt: skip
    """Connect a Twilio SMS number (the gateway points the number's incoming message webhook at itself)."""
    creds = pb.TwilioSmsCredentials(account_sid=account_sid, auth_token=auth_token, phone_number=phone_number)
    await _connect(pb.ConnectChannelRequest(space_id=space_id, name=name, twilio_sms=creds), as_json, token_value)


# -- read and disconnect --


@channels.command("list")
@click.option("--type", "type_", type=click.Choice(TYPES), default=None, help="Only channels of this type.")
@click.option("--all", "include_disconnected", is_flag=True, help="Include disconnected channels.")
@click.option("--page-size", default=0, type=int, help="Channels per request (default: the service's).")
@space_option
@json_option
@token_option
@command
async def list_channels(type_: str | None, include_disconnected: bool, page_size: int, space_id: str, as_json: bool,
                        token_value: str | None) -> None:  # fmt: skip
    """List the space's channels (every page)."""
    rows: list[dict[str, Any]] = []
    page_token = ""
    while True:
        request = pb.ListChannelsRequest(
            space_id=space_id,
            type=_TYPE_VALUES[type_] if type_ else common_pb2.CHANNEL_TYPE_UNSPECIFIED,
            include_disconnected=include_disconnected,
            page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
        )
        reply: pb.ListChannelsResponse = await _rpc("ListChannels", request, token_value)
        rows += [_row(c) for c in reply.channels]
        page_token = reply.page.next_page_token
        if not page_token:
            break
    emit(rows, as_json, COLUMNS)


@channels.command("show")
@click.argument("channel_id")
@space_option
@json_option
@token_option
@command
async def show(channel_id: str, space_id: str, as_json: bool, token_value: str | None) -> None:
    """Show one channel."""
    reply = await _rpc("GetChannel", pb.GetChannelRequest(space_id=space_id, channel_id=channel_id), token_value)
    data = _row(reply.channel)
    emit(data, as_json, None if as_json else [*COLUMNS, "account_detail", "credential_hint", "created_at"])


@channels.command("disconnect")
@click.argument("channel_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@space_option
@json_option
@token_option
@command
async def disconnect(channel_id: str, yes: bool, space_id: str, as_json: bool, token_value: str | None) -> None:
    """Disconnect a channel: it stops receiving and sending."""
    if not yes and not as_json:
        click.confirm(f"Disconnect channel {channel_id}?", abort=True)
    request = pb.DisconnectChannelRequest(space_id=space_id, channel_id=channel_id)
    reply = await _rpc("DisconnectChannel", request, token_value)
    emit(_row(reply.channel), as_json, COLUMNS)


@channels.command("health")
@click.argument("channel_id")
@space_option
@json_option
@token_option
@command
async def health(channel_id: str, space_id: str, as_json: bool, token_value: str | None) -> None:
    """When the channel last received and sent, and its last error."""
    request = pb.GetChannelHealthRequest(space_id=space_id, channel_id=channel_id)
    reply: pb.GetChannelHealthResponse = await _rpc("GetChannelHealth", request, token_value)
    data = to_dict(reply)
    data["status"] = pb.ChannelStatus.Name(reply.status).removeprefix("CHANNEL_STATUS_").lower()
    columns = ["channel_id", "status", "last_inbound_at", "last_outbound_at", "last_error_at", "last_error_code",
               "last_error_message", "consecutive_failures"]  # fmt: skip
    emit(data, as_json, columns)
