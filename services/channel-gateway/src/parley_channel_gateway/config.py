"""The gateway's settings (environment prefix PARLEY_, on top of the kit's)."""

from __future__ import annotations

from parley_kit.settings import ServiceSettings
from pydantic import Field, field_validator

# Sends per second and burst per channel, from each provider's documented limits: the Messenger Send API
# allows 300 requests/s per Page (we keep a margin), Instagram 100 calls/s per account, WhatsApp Cloud API
# 80 messages/s per phone number by default, Telegram about 30 messages/s per bot, LINE 2,000 push requests/s
# per channel (we keep a margin). Viber publishes no per-bot number (it answers tooManyRequests, status 12, when
# breached): 50/s, like custom channels. Twilio accepts API requests faster than a number sends (1 segment/s for a
# US long code, more for toll-free and short codes) and queues the rest per sender, so its limit only spreads an
# account's API calls.
DEFAULT_RATE_LIMITS: dict[str, float] = {
    "messenger": 250.0,
    "instagram": 100.0,
    "whatsapp": 80.0,
    "telegram": 30.0,
    "custom": 50.0,
    "line": 1000.0,
    "viber": 50.0,
    "twilio_sms": 10.0,
}


class Settings(ServiceSettings):
    """Channel gateway settings. Secrets (keys, app secret, verify token) come from the environment only."""

    service_name: str = "channel-gateway"

    # -- secrets and provider endpoints ---------------------------------------------------------------------
    channel_gateway_encryption_key: str = Field(
        default="",
        description="Fernet key(s), comma-separated: the first encrypts channel secrets at rest, all decrypt "
        "(rotation). Required by serve, web and worker (not by migrate). Generate one with `python -c 'from "
        "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`",
    )
    channel_gateway_meta_app_secret: str = Field(
        default="", description="Meta app secret: X-Hub-Signature-256 of Messenger, Instagram, WhatsApp webhooks"
    )
    channel_gateway_meta_verify_token: str = Field(
        default="", description="The verify token configured for the Meta webhook subscription (GET handshake)"
    )
    channel_gateway_graph_api_url: str = Field(default="https://graph.facebook.com/v21.0", pattern=r"^https?://")
    channel_gateway_telegram_api_url: str = Field(default="https://api.telegram.org", pattern=r"^https?://")
    channel_gateway_line_api_url: str = Field(default="https://api.line.me", pattern=r"^https?://")
    channel_gateway_viber_api_url: str = Field(default="https://chatapi.viber.com/pa", pattern=r"^https?://")
    channel_gateway_twilio_api_url: str = Field(default="https://api.twilio.com", pattern=r"^https?://")
    channel_gateway_public_url: str = Field(
        default="http://127.0.0.1:8080",
        pattern=r"^https?://",
        description="The gateway's public base URL: Telegram, LINE, Twilio SMS and custom channels' webhook URLs are "
        "built on it (Twilio signs the URL it requested, so it must be exactly what Twilio calls)",
    )

    # -- web process ----------------------------------------------------------------------------------------
    http_port: int = Field(default=8080, ge=0, le=65535, description="The webhook HTTP port (PARLEY_HTTP_PORT)")
    channel_gateway_http_workers: int = Field(default=4, ge=1, le=64, description="gunicorn worker processes")
    channel_gateway_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger webhooks get 413")
    channel_gateway_publish_timeout_seconds: float = Field(
        default=3.0, gt=0, description="how long a webhook waits for JetStream acks before answering 503"
    )
    channel_gateway_channel_cache_seconds: float = Field(
        default=10.0, ge=0, description="how long the web process caches a channel lookup (0: no cache)"
    )

    # -- outbound worker ------------------------------------------------------------------------------------
    channel_gateway_provider_timeout_seconds: float = Field(default=10.0, gt=0)
    channel_gateway_rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description='sends/s per channel by type, JSON, e.g. {"whatsapp": 20}; unset types keep the defaults',
    )
    channel_gateway_worker_batch_size: int = Field(default=32, ge=1, le=256)
    channel_gateway_max_inline_retry_seconds: float = Field(
        default=5.0,
        ge=0,
        description="provider retry waits up to this long are slept in the worker; longer ones go back to "
        "JetStream (nak with delay)",
    )
    channel_gateway_send_attempts: int = Field(
        default=8, ge=1, description="provider attempts of one send request before it is recorded failed"
    )

    @field_validator("channel_gateway_rate_limits")
    @classmethod
    def _known_types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(DEFAULT_RATE_LIMITS)
        if unknown:
            raise ValueError(f"unknown channel types {sorted(unknown)}; use {sorted(DEFAULT_RATE_LIMITS)}")
        if any(rate <= 0 for rate in value.values()):
            raise ValueError("rates must be positive sends per second")
        return value

    def rate_limit(self, channel_type: str) -> float:
        """Sends per second allowed for one channel of `channel_type`."""
        return self.channel_gateway_rate_limits.get(channel_type, DEFAULT_RATE_LIMITS[channel_type])
