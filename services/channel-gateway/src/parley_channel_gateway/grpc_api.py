"""ChannelService over gRPC: maps protobuf to the domain and back; managers manage, agents read."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from parley.channel_gateway.v1 import channel_service_pb2 as pb
from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.common.v1 import common_pb2
from parley_kit.auth import current_caller
from parley_kit.errors import InvalidArgument
from parley_kit.permissions import Permission

from parley_channel_gateway.models import ACTIVE, ChannelRow
from parley_channel_gateway.service import CHANNEL_TYPES, ChannelService, Credentials, validate_credentials

TYPE_TO_PB = {
    "messenger": common_pb2.CHANNEL_TYPE_MESSENGER,
    "instagram": common_pb2.CHANNEL_TYPE_INSTAGRAM,
    "whatsapp": common_pb2.CHANNEL_TYPE_WHATSAPP,
    "telegram": common_pb2.CHANNEL_TYPE_TELEGRAM,
    "custom": common_pb2.CHANNEL_TYPE_CUSTOM,
    "line": common_pb2.CHANNEL_TYPE_LINE,
    "viber": common_pb2.CHANNEL_TYPE_VIBER,
    "twilio_sms": common_pb2.CHANNEL_TYPE_TWILIO_SMS,
}
PB_TO_TYPE = {v: k for k, v in TYPE_TO_PB.items()}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChannelService"].full_name


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _credentials(request: pb.ConnectChannelRequest | pb.UpdateChannelRequest) -> Credentials | None:
    which = request.WhichOneof("config")
    if which is None:
        return None
    fields = {f.name: value for f, value in getattr(request, which).ListFields()}
    return validate_credentials(which, fields)


class ChannelApi(pb_grpc.ChannelServiceServicer):
    def __init__(self, service: ChannelService) -> None:
        self.service = service

    def _channel(self, row: ChannelRow) -> pb.Channel:
        return pb.Channel(
            channel_id=row.id,
            space_id=row.space_id,
            type=TYPE_TO_PB.get(row.type, common_pb2.CHANNEL_TYPE_UNSPECIFIED),
            name=row.name,
            external_id=row.external_id or "",
            status=pb.CHANNEL_STATUS_ACTIVE if row.status == ACTIVE else pb.CHANNEL_STATUS_DISCONNECTED,
            account_detail=row.account_detail,
            outbound_webhook_url=row.outbound_webhook_url,
            inbound_webhook_url=self.service.inbound_url(row),
            credential_hint=row.credential_hint,
            created_at=_ts(row.created_at),
            updated_at=_ts(row.updated_at),
            disconnected_at=_ts(row.disconnected_at),
        )

    async def ConnectChannel(
        self, request: pb.ConnectChannelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConnectChannelResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_MANAGE, space_id=space_id)
        creds = _credentials(request)
        if creds is None:
            raise InvalidArgument(f"give one of {', '.join(CHANNEL_TYPES)} with its credentials")
        connected = await self.service.connect(space_id, request.name, creds)
        return pb.ConnectChannelResponse(
            channel=self._channel(connected.channel), webhook_secret=connected.webhook_secret
        )

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListChannelsResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_READ, space_id=space_id)
        type_ = None
        if request.type != common_pb2.CHANNEL_TYPE_UNSPECIFIED:
            type_ = PB_TO_TYPE.get(request.type)
            if type_ is None:
                raise InvalidArgument(f"unknown channel type {request.type}")
        page = await self.service.list(
            space_id,
            type_=type_,
            include_disconnected=request.include_disconnected,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
        )
        return pb.ListChannelsResponse(
            channels=[self._channel(r) for r in page.channels],
            page=common_pb2.PageResponse(next_page_token=page.next_token, total_count=page.total),
        )

    async def GetChannel(
        self, request: pb.GetChannelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChannelResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_READ, space_id=space_id)
        return pb.GetChannelResponse(channel=self._channel(await self.service.get(space_id, request.channel_id)))

    async def UpdateChannel(
        self, request: pb.UpdateChannelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateChannelResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_MANAGE, space_id=space_id)
        updated = await self.service.update(
            space_id,
            request.channel_id,
            name=request.name if request.HasField("name") else None,
            creds=_credentials(request),
            rotate_secret=request.rotate_secret,
        )
        return pb.UpdateChannelResponse(channel=self._channel(updated.channel), webhook_secret=updated.webhook_secret)

    async def DisconnectChannel(
        self, request: pb.DisconnectChannelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DisconnectChannelResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_MANAGE, space_id=space_id)
        row = await self.service.disconnect(space_id, request.channel_id)
        return pb.DisconnectChannelResponse(channel=self._channel(row))

    async def GetChannelHealth(
        self, request: pb.GetChannelHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChannelHealthResponse:
        caller = current_caller()
        space_id = caller.scoped_space(request.space_id)
        caller.require(Permission.CHANNELS_READ, space_id=space_id)
        row = await self.service.get(space_id, request.channel_id)
        return pb.GetChannelHealthResponse(
            channel_id=row.id,
            status=pb.CHANNEL_STATUS_ACTIVE if row.status == ACTIVE else pb.CHANNEL_STATUS_DISCONNECTED,
            last_inbound_at=_ts(row.last_inbound_at),
            last_outbound_at=_ts(row.last_outbound_at),
            last_error_at=_ts(row.last_error_at),
            last_error_code=row.last_error_code,
            last_error_message=row.last_error_message,
            consecutive_failures=row.consecutive_failures,
        )
