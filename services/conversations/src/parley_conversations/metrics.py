"""Business metrics of the conversations service (the shared RPC/event/outbox metrics are the kit's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from parley_conversations import domain

MESSAGES = Counter(
    "parley_conversations_messages_total",
    "Messages stored, by direction (inbound, outbound) and sender type",
    ["direction", "sender_type"],
)
OPENED = Counter("parley_conversations_opened_total", "Conversations opened, by source", ["source"])
CLOSED = Counter("parley_conversations_closed_total", "Conversations closed; auto is true for auto-close", ["auto"])
STATUS_CHANGES = Counter(
    "parley_conversations_message_status_changes_total", "Outbound message status changes, by new status", ["status"]
)
REPLIES_REFUSED = Counter(
    "parley_conversations_replies_refused_total",
    "SendMessage calls refused before sending, by reason (window, closed, invalid, shortcut)",
    ["reason"],
)
INGEST_BATCH = Histogram(
    "parley_conversations_ingest_batch_events",
    "Inbound events applied per group commit (one transaction across the partitions it covers)",
    buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000),
)
INGEST_GROUP_PARTITIONS = Histogram(
    "parley_conversations_ingest_group_partitions",
    "Partitions whose batches one group commit applied together",
    buckets=(1, 2, 4, 8, 12, 16),
)
INGEST_SECONDS = Histogram(
    "parley_conversations_ingest_batch_seconds",
    "Time to apply one inbound batch, by stage (contacts, database)",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
INGEST_DUPLICATES = Counter(
    "parley_conversations_ingest_duplicates_total", "Inbound messages skipped because they were already stored"
)
INGEST_UNMATCHED = Counter(
    "parley_conversations_ingest_unmatched_total",
    "Receipts, reactions and edits naming a message this service does not (yet) know",
)
INGEST_GAP_FILLED = Counter(
    "parley_conversations_ingest_gap_filled_total",
    "Inbound events read directly from the stream because an earlier owner of the partition left them pending",
)
INGEST_POISON = Counter(
    "parley_conversations_ingest_poison_total", "Inbound events dead-lettered because they can never be applied"
)
INGEST_IDENTITY_FAILURES = Counter(
    "parley_conversations_ingest_identity_failures_total",
    "Identities the contacts service failed in a group commit, by outcome: retried (failed on their own: their "
    "partition stops at their first event), dead_lettered (their events, after too many attempts) or transient "
    "(a passing per-item error: their partition stops at their first event, not counted as an attempt)",
    ["outcome"],
)
for _outcome in ("retried", "dead_lettered", "transient"):
    INGEST_IDENTITY_FAILURES.labels(_outcome)
PARTITIONS_OWNED = Gauge(
    "parley_conversations_ingest_partitions_owned", "Inbound partitions this replica currently consumes"
)
TIME_TO_VISIBILITY = Histogram(
    "parley_conversations_time_to_visibility_seconds",
    "From the gateway receiving a message (InboundEvent.received_at) to the commit that stored it",
    ["channel_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
AUTO_CLOSED = Counter("parley_conversations_auto_closed_total", "Conversations closed by the inactivity timer")


def count_event(event: domain.DomainEvent) -> None:
    if isinstance(event, domain.ConversationOpened | domain.ConversationReopened):
        OPENED.labels(event.conversation.source).inc()
    elif isinstance(event, domain.ConversationClosed):
        CLOSED.labels(str(bool(event.conversation.auto_closed)).lower()).inc()
    elif isinstance(event, domain.MessageReceived | domain.MessageSent):
        MESSAGES.labels(event.message.direction, event.message.sender_type).inc()
    elif isinstance(event, domain.MessageStatusChanged):
        STATUS_CHANGES.labels(event.status).inc()
