"""The outbound worker's domain: send one request exactly once, within the provider's rules and rate.

Life of a send request (keyed by `request_id` in the send log):

1. Claim: insert the log row if new and lock it. SENT or FAILED: done, nothing is sent again.
2. Rate: take a token from the channel's bucket (PostgreSQL, shared by every replica); wait for the
   reserved slot, or give the message back to JetStream when the wait would be long.
3. Record SENDING (committed) with `claimed_until`, then call the provider.
4. Record the outcome and enqueue its `OutboundStatusEvent` in the outbox, in one transaction:
   SENT with the provider's message id; FAILED with the provider's code and message (permanent errors,
   `window_closed`, exhausted retries); or RETRYING for timeouts, 5xx and rate limits, which are retried
   in-process when the provider's wait is short, else through JetStream (nak with the consumer's backoff).

The crash window: a worker that dies between 3 and 4 leaves the row SENDING. The provider may or may not
have accepted the message, and Meta, WhatsApp, Telegram and Twilio offer no idempotency key, so when the request
is redelivered after `claimed_until` the gateway does not send again: it records FAILED with code
`outcome_unknown` (at most once: a person can resend; a duplicate cannot be unsent). Custom channels
receive `X-Parley-Delivery-Id` (the request id) and must de-duplicate on it, and LINE runs a push once per
`X-Line-Retry-Key` (derived from the request id), so for them the send is simply retried. A redelivery
while `claimed_until` is in the future (the first worker is still in its provider call) is given back to
JetStream untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from parley_kit.db import transaction
from sqlalchemy.ext.asyncio import AsyncSession

from parley_channel_gateway import metrics
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.models import ACTIVE, FAILED, QUEUED, RETRYING, SENDING, SENT, ChannelRow, SendLogRow
from parley_channel_gateway.providers import OutboundMessage, ProviderError, Providers, Target
from parley_channel_gateway.repository import Repository

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Give the request back to JetStream; it is tried again after the consumer's backoff."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


@dataclass(frozen=True)
class Outcome:
    """What happened to a request: sent, failed, or already done earlier (duplicate)."""

    status: str
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""
    duplicate: bool = False


StatusSink = Callable[[AsyncSession, SendLogRow], Any]
"""Enqueues the request's status event in the outbox, in the caller's transaction."""


@dataclass
class SenderConfig:
    max_attempts: int = 8
    max_inline_wait: float = 5.0
    rate_wait: float = 10.0
    claim_seconds: float = 30.0
    rate_for: Callable[[str], float] = lambda _type: 50.0


class OutboundSender:
    def __init__(
        self,
        repo: Repository,
        box: SecretBox,
        providers: Providers,
        on_final: StatusSink,
        config: SenderConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repo = repo
        self.box = box
        self.providers = providers
        self.on_final = on_final
        self.config = config
        self.clock = clock

    async def send(self, msg: OutboundMessage) -> Outcome:
        """Send `msg` once; returns the final outcome or raises RetryLater."""
        target, done = await self._claim(msg)
        if done is not None:
            return done
        assert target is not None
        backoff = 0.5
        while True:
            await self._rate(target)
            attempt = await self._mark_sending(msg)
            if isinstance(attempt, Outcome):
                return attempt
            try:
                provider_id = await self.providers.send(target, msg, self.clock(), attempt=attempt)
            except ProviderError as exc:
                if not exc.retryable:
                    return await self._finish(msg, FAILED, error_code=exc.code, error_message=exc.message)
                metrics.PROVIDER_RETRIES.labels(target.type, exc.code).inc()
                if attempt >= self.config.max_attempts:
                    message = f"gave up after {attempt} attempts; last error: {exc.message}"
                    return await self._finish(msg, FAILED, error_code=exc.code, error_message=message)
                await self._mark_retrying(msg, exc)
                wait = exc.retry_after if exc.retry_after is not None else backoff
                if wait > self.config.max_inline_wait:
                    raise RetryLater(
                        f"{target.type} asked to wait {wait:.0f}s ({exc.code}: {exc.message})", wait
                    ) from None
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, self.config.max_inline_wait)
                continue
            return await self._finish(msg, SENT, provider_message_id=provider_id)

    # -- steps ---------------------------------------------------------------------------------------------------

    async def _claim(self, msg: OutboundMessage) -> tuple[Target | None, Outcome | None]:
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.claim_send(
                session,
                SendLogRow(
                    request_id=msg.request_id,
                    space_id=msg.space_id,
                    channel_id=msg.channel_id,
                    contact_external_id=msg.contact_external_id,
                    origin=msg.origin,
                    origin_ref=msg.origin_ref,
                    status=QUEUED,
                    attempts=0,
                ),
            )
            if row.status in (SENT, FAILED):
                return None, _outcome(row, duplicate=True)
            channel = await self.repo.channel(session, msg.channel_id)
            if channel is None or channel.space_id != msg.space_id:
                outcome = await self._final(session, row, FAILED, "channel_not_found",
                                            f"no channel {msg.channel_id} in space {msg.space_id}")  # fmt: skip
                return None, outcome
            row.channel_type = channel.type
            if channel.status != ACTIVE:
                outcome = await self._final(session, row, FAILED, "channel_disconnected",
                                            "the channel was disconnected before the message was sent")  # fmt: skip
                return None, outcome
            if row.status == SENDING:
                if row.claimed_until is not None and row.claimed_until > self.clock():
                    raise RetryLater("another worker is sending this request")
                if channel.type not in IDEMPOTENT_TYPES:
                    outcome = await self._final(
                        session,
                        row,
                        FAILED,
                        "outcome_unknown",
                        "the worker stopped during the provider call; the message may or may not have been "
                        "delivered, and it is not sent again to avoid a duplicate",
                    )
                    return None, outcome
            return self._target(channel), None

    def _target(self, channel: ChannelRow) -> Target:
        secrets = self.box.open(channel.secrets)
        return Target(
            channel_id=channel.id,
            type=channel.type,
            external_id=channel.external_id or "",
            access_token=str(secrets.get("access_token", "")),
            webhook_url=channel.outbound_webhook_url,
            webhook_secret=str(secrets.get("webhook_secret", "")),
            display_name=channel.account_detail or channel.name,
            account_detail=channel.account_detail,
        )

    async def _rate(self, target: Target) -> None:
        rate = self.config.rate_for(target.type)
        grant = await self.repo.take_token(
            target.channel_id, rate=rate, burst=max(1.0, rate), max_wait=self.config.rate_wait
        )
        if not grant.granted:
            metrics.RATE_LIMITED.labels(target.type).inc()
            raise RetryLater(f"channel {target.channel_id} is at its rate limit ({rate:g}/s)", grant.wait_seconds)
        if grant.wait_seconds > 0:
            await asyncio.sleep(grant.wait_seconds)

    async def _mark_sending(self, msg: OutboundMessage) -> int | Outcome:
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.lock_send(session, msg.request_id)
            if row.status in (SENT, FAILED):
                return _outcome(row, duplicate=True)
            row.status = SENDING
            row.attempts += 1
            row.claimed_until = self.clock() + timedelta(seconds=self.config.claim_seconds)
            row.updated_at = self.clock()
            return row.attempts

    async def _mark_retrying(self, msg: OutboundMessage, exc: ProviderError) -> None:
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.lock_send(session, msg.request_id)
            assert row is not None
            row.status = RETRYING
            row.claimed_until = None
            row.error_code, row.error_message = exc.code, exc.message[:1000]
            row.updated_at = self.clock()
            await self.repo.record_send_outcome(
                session, msg.channel_id, ok=False, error_code=exc.code, error_message=exc.message
            )

    async def _finish(self, msg: OutboundMessage, status: str, *, provider_message_id: str = "",
                      error_code: str = "", error_message: str = "") -> Outcome:  # fmt: skip
        async with transaction(self.repo.sessions) as session:
            row = await self.repo.lock_send(session, msg.request_id)
            assert row is not None
            return await self._final(session, row, status, error_code, error_message, provider_message_id)

    async def _final(self, session: AsyncSession, row: SendLogRow, status: str, error_code: str = "",
                     error_message: str = "", provider_message_id: str = "") -> Outcome:  # fmt: skip
        now = self.clock()
        row.status = status
        row.claimed_until = None
        row.updated_at = now
        row.provider_message_id = provider_message_id
        row.error_code, row.error_message = error_code, error_message[:1000]
        if status == SENT:
            row.sent_at = now
        await session.flush()
        if row.channel_type:
            await self.repo.record_send_outcome(
                session, row.channel_id, ok=status == SENT, error_code=error_code, error_message=error_message
            )
        await self.on_final(session, row)
        metrics.OUTBOUND_SENDS.labels(row.channel_type or "unknown", _status_label(status, error_code)).inc()
        return _outcome(row)


# Channel types whose provider de-duplicates a retried send (custom: X-Parley-Delivery-Id; LINE: X-Line-Retry-Key,
# for 24 hours), so a send interrupted by a crash is sent again rather than recorded `outcome_unknown`.
IDEMPOTENT_TYPES = frozenset({"custom", "line"})

# Failures decided by Parley's own rules, before any provider call (`rejected` in the outbound sends metric).
REJECTED_CODES = frozenset({"window_closed", "unsupported_content"})


def _status_label(status: str, error_code: str) -> str:
    return "rejected" if status == FAILED and error_code in REJECTED_CODES else status


def _outcome(row: SendLogRow, duplicate: bool = False) -> Outcome:
    return Outcome(row.status, row.provider_message_id, row.error_code, row.error_message, duplicate)
