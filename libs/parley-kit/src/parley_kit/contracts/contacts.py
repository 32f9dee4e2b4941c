"""The contacts service's stream `CONTACTS` and its subjects.

Published by the contacts service through its outbox; consumed by conversations (assignee, names and
custom field values for shortcuts, erasure and merges) and others. Nats-Msg-Id is `EventMeta.event_id`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parley_kit.nats.streams import StreamSpec

STREAM = "CONTACTS"
SUBJECTS = ("contacts.>",)
CONTACT_CREATED = "contacts.contact.created"
CONTACT_UPDATED = "contacts.contact.updated"
CONTACT_DELETED = "contacts.contact.deleted"
CONTACT_MERGED = "contacts.contact.merged"
CONTACT_ASSIGNED = "contacts.contact.assigned"
TAG_ADDED = "contacts.tag.added"
TAG_REMOVED = "contacts.tag.removed"
FIELD_UPDATED = "contacts.field.updated"
# A custom field's definition: its key renamed (FieldRenamed), the field deleted (FieldDeleted).
FIELD_RENAMED = "contacts.field.renamed"
FIELD_DELETED = "contacts.field.deleted"
MAX_AGE = timedelta(days=7)


def stream_spec(replicas: int = 1, *, max_age: timedelta = MAX_AGE) -> StreamSpec:
    """The `CONTACTS` stream, as the contacts service declares it (`parley_contacts.events.stream`)."""
    from parley_kit.nats.streams import StreamSpec

    return StreamSpec(name=STREAM, subjects=SUBJECTS, max_age=max_age, replicas=replicas)
