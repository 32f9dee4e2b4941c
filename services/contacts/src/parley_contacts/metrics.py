"""Business metrics of the contacts service (the kit's shared RPC/event/outbox metrics come on top)."""

from __future__ import annotations

from parley_kit.metrics import LATENCY_BUCKETS
from prometheus_client import Counter, Gauge, Histogram

UPSERTS = Counter(
    "parley_contacts_upserts_total",
    "UpsertByIdentity calls, by outcome: created (new contact) or existing",
    ["outcome"],
)
UPSERT_SECONDS = Histogram(
    "parley_contacts_upsert_seconds", "Time spent in UpsertByIdentity's transaction", buckets=LATENCY_BUCKETS
)
UPSERT_BATCH_SECONDS = Histogram(
    "parley_contacts_upsert_batch_seconds",
    "Time spent in one UpsertByIdentities call (all its identities)",
    buckets=LATENCY_BUCKETS,
)
EVENTS = Counter(
    "parley_contacts_changes_total",
    "Domain changes recorded (one per event put in the outbox), by kind (contact.created, tag.added, ...)",
    ["kind"],
)
IMPORT_ROWS = Counter(
    "parley_contacts_import_rows_total",
    "Rows of imports, by outcome (created, updated by dedupe, or failed)",
    ["outcome"],
)
TAGS_PENDING_DELETION = Gauge(
    "parley_contacts_tags_pending_deletion",
    "Tags deleted from the catalog whose contacts are not all untagged yet (every space; refreshed by each pass "
    "of the tag-deletion loop, so every replica shows about the same value)",
)
TAG_DELETION_OLDEST = Gauge(
    "parley_contacts_tag_deletion_oldest_timestamp_seconds",
    "When the oldest tag deletion still pending was requested (Unix time; 0 when none is pending)",
)
TAG_DELETION_UNTAGGED = Counter(
    "parley_contacts_tag_deletion_untagged_total",
    "Contacts untagged by tag deletions (counted as each chunk commits)",
)
