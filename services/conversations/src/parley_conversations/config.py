"""Settings of the conversations service (environment prefix PARLEY_)."""

from __future__ import annotations

from parley_kit.settings import AssigneeSettings
from pydantic import Field


class Settings(AssigneeSettings):
    """The kit's settings, with the workspace directory (PARLEY_WORKSPACE_ADDR: assignee checks and
    {{user.name}} in shortcuts), and the contacts service, the ingest and auto-close."""

    service_name: str = "conversations"
    contacts_addr: str = Field(
        default="",
        description="host:port of the contacts service (UpsertByIdentity); without it inbound events wait in JetStream",
    )
    contacts_timeout_seconds: float = Field(default=5.0, gt=0)
    contacts_report_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A known contact's interaction is reported to contacts (UpsertByIdentity) at most this often; "
        "0 calls contacts for every inbound batch",
    )

    # Ingest of the gateway's inbound events (one durable consumer per partition subject).
    ingest_batch_size: int = Field(default=200, ge=1, le=1000, description="Inbound events per fetch and transaction")
    ingest_fetch_timeout_seconds: float = Field(default=1.0, gt=0)
    ingest_ack_wait_seconds: float = Field(default=30.0, gt=0)
    ingest_rebalance_seconds: float = Field(default=2.0, gt=0, description="How often replicas rebalance partitions")
    ingest_max_partitions: int = Field(default=16, ge=0, description="Most partitions one replica owns (0: none)")
    ingest_enabled: bool = Field(default=True, description="Run the inbound consumers in this process")
    ingest_identity_attempts: int = Field(
        default=10,
        ge=1,
        description="Deliveries in a row on which the contacts service may fail one identity (per item) before "
        "that identity's inbound events are dead-lettered and its partition goes on",
    )

    # Auto-close of inactive conversations.
    auto_close_interval_seconds: float = Field(default=30.0, gt=0, description="How often auto-close looks")
    auto_close_batch: int = Field(default=200, ge=1)
