"""Business metrics of the contacts service (the kit's shared RPC/event/outbox metrics come on top)."""

from __future__ import annotations

from parley_kit.metrics import LATENCY_BUCKETS
from prometheus_client import Counter, Histogram

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
