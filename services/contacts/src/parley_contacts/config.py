"""Settings of the contacts service (environment prefix PARLEY_)."""

from __future__ import annotations

from parley_kit.settings import AssigneeSettings
from pydantic import Field

from parley_contacts.service import TAG_DELETION_CHUNK, TAG_DELETION_INTERVAL


class Settings(AssigneeSettings):
    """The kit's settings, with the workspace directory that checks assignees (PARLEY_WORKSPACE_ADDR)."""

    service_name: str = "contacts"
    contacts_count_limit: int = Field(
        default=0,
        ge=0,
        description="Stop counting a list's total_count at this many rows (0: always exact)",
    )
    contacts_pool_size: int = Field(default=20, ge=1, le=200, description="Database connections (doubled at peak)")
    contacts_migrate_on_start: bool = Field(
        default=False,
        description="Apply database migrations (under an advisory lock) before serving; `make run` migrates first",
    )
    contacts_tag_deletion_interval_seconds: float = Field(
        default=TAG_DELETION_INTERVAL,
        gt=0,
        description="How often the tag-deletion loop looks for deletions a restart or a failure interrupted "
        "(DeleteTag wakes it at once)",
    )
    contacts_tag_deletion_chunk: int = Field(
        default=TAG_DELETION_CHUNK,
        ge=1,
        le=10_000,
        description="Contacts a tag deletion untags per transaction (each waits behind it; the bench's ChangeTags "
        "and DeleteTag lines show what a chunk costs)",
    )
