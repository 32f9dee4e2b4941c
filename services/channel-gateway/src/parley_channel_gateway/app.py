"""Wiring of the three processes: `serve` (ChannelService gRPC), `worker` (outbound sends), `web` (webhooks)."""

from __future__ import annotations

import os
import sys

from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_kit.runtime import ServiceRuntime

from parley_channel_gateway import events
from parley_channel_gateway.config import Settings
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.grpc_api import SERVICE_NAME, ChannelApi
from parley_channel_gateway.models import outbox
from parley_channel_gateway.providers import Providers
from parley_channel_gateway.repository import Repository
from parley_channel_gateway.sender import OutboundSender, SenderConfig
from parley_channel_gateway.service import ChannelService


def providers_from(settings: Settings) -> Providers:
    return Providers(
        graph_api_url=settings.channel_gateway_graph_api_url,
        telegram_api_url=settings.channel_gateway_telegram_api_url,
        timeout=settings.channel_gateway_provider_timeout_seconds,
        line_api_url=settings.channel_gateway_line_api_url,
        viber_api_url=settings.channel_gateway_viber_api_url,
        twilio_api_url=settings.channel_gateway_twilio_api_url,
        public_url=settings.channel_gateway_public_url,
    )


async def build_serve(settings: Settings) -> ServiceRuntime:
    box = SecretBox(settings.channel_gateway_encryption_key)  # refuses to start without a valid key
    rt = ServiceRuntime(settings, streams=events.streams(settings.stream_replicas))
    await rt.connect()
    providers = providers_from(settings)
    service = ChannelService(
        Repository(rt.sessions),
        box,
        providers,
        settings.channel_gateway_public_url,
    )
    rt.add_servicer(pb_grpc.add_ChannelServiceServicer_to_server, ChannelApi(service), SERVICE_NAME)
    return rt


async def build_worker(settings: Settings) -> ServiceRuntime:
    box = SecretBox(settings.channel_gateway_encryption_key)  # refuses to start without a valid key
    spec = events.outbound_consumer()
    rt = ServiceRuntime(settings, streams=events.streams(settings.stream_replicas), consumers=[spec], outbox=outbox)
    await rt.connect()
    sender = OutboundSender(
        Repository(rt.sessions),
        box,
        providers_from(settings),
        events.enqueue_status,
        SenderConfig(
            max_attempts=settings.channel_gateway_send_attempts,
            max_inline_wait=settings.channel_gateway_max_inline_retry_seconds,
            claim_seconds=settings.channel_gateway_provider_timeout_seconds * 3,
            rate_for=settings.rate_limit,
        ),
    )
    rt.add_consumer(
        spec,
        events.OutboundHandler(sender),
        message_type=ev.OutboundSendRequest,
        batch=True,
        batch_size=settings.channel_gateway_worker_batch_size,
    )
    return rt


async def serve(settings: Settings) -> None:
    await (await build_serve(settings)).run()


async def worker(settings: Settings) -> None:
    await (await build_worker(settings)).run()


def web() -> None:
    """Replace this process with gunicorn serving the webhook app."""
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:parley_channel_gateway.gunicorn_conf",
        "parley_channel_gateway.webapp:make_app()",
    ]
    os.execv(sys.executable, args)
