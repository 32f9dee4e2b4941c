"""Saved views name custom fields by id, so renaming a field's key keeps them working.

A field condition in `views.criteria` was `{"field": {"name": key, "op": ..., "values": [...]}}`: after
a rename the view failed, and a new field given the old key silently took it over. Conditions now also
carry the field's id (`"id"`), which is what the service resolves; `"name"` stays as the key at save
time (quoted in errors once the field is deleted). This migration adds the id to every condition whose
key names a custom field of the view's space; a condition whose field was already deleted keeps its key
alone (and its error). Downgrading writes each field's current key back as `"name"` and drops the ids, so
the previous release reads renamed fields correctly.

The JSON is rewritten here, in Python: views are few (saved by people), and this migration must not
depend on the service's code, which will change.

Revision ID: 20261206_0005
Revises: 20261125_0004
Create Date: 2026-12-06
"""

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_0005"
down_revision: str | None = "20261125_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]


def _walk(node: Any, space_id: str, rewrite: Rewrite) -> Any:
    """The criteria JSON with `rewrite` applied to every field condition's body."""
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((kind, body),) = node.items()
    if kind in ("all", "any") and isinstance(body, list):
        return {kind: [_walk(child, space_id, rewrite) for child in body]}
    if kind == "field" and isinstance(body, dict):
        return {kind: rewrite(space_id, body)}
    return node


def _rewrite_views(rewrite: Rewrite) -> None:
    conn = op.get_bind()
    views = conn.execute(sa.text("SELECT id, space_id, CAST(criteria AS text) FROM views")).all()
    for view_id, space_id, raw in views:
        criteria = json.loads(raw)
        updated = _walk(criteria, space_id, rewrite)
        if updated != criteria:
            conn.execute(
                sa.text("UPDATE views SET criteria = CAST(:criteria AS jsonb) WHERE id = :id"),
                {"criteria": json.dumps(updated), "id": view_id},
            )


def _fields() -> list[tuple[str, str, str]]:
    """(space_id, key, id) of the custom fields of spaces that have views."""
    rows = op.get_bind().execute(
        sa.text("SELECT space_id, key, id FROM field_definitions WHERE space_id IN (SELECT space_id FROM views)")
    )
    return [(space_id, key, str(field_id)) for space_id, key, field_id in rows]


def upgrade() -> None:
    ids = {(space_id, key): field_id for space_id, key, field_id in _fields()}

    def add_id(space_id: str, body: dict[str, Any]) -> dict[str, Any]:
        field_id = ids.get((space_id, body.get("name")))
        return body if "id" in body or field_id is None else {**body, "id": field_id}

    _rewrite_views(add_id)


def downgrade() -> None:
    keys = {(space_id, field_id): key for space_id, key, field_id in _fields()}

    def current_key(space_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if "id" not in body:
            return body
        rest = {k: v for k, v in body.items() if k != "id"}
        return {**rest, "name": keys.get((space_id, body["id"]), body.get("name"))}

    _rewrite_views(current_key)
