"""Saved views name custom fields by id: renaming a key keeps them working, deleting the field does not."""

from __future__ import annotations

import pytest
from parley_contacts.domain import FieldCond, FieldOp, Group, criteria_to_json
from parley_contacts.service import Actor, ContactsService
from parley_kit.errors import InvalidArgument
from sqlalchemy import text


def _score_view() -> Group:
    return Group(
        any=False,
        children=(
            FieldCond("score", FieldOp.GREATER_THAN, ("5",)),
            Group(any=True, children=(FieldCond("email", FieldOp.IS_SET), FieldCond("score", FieldOp.EQUALS, ("1",)))),
        ),
    )


async def _listed(service: ContactsService, space: str, actor: Actor, view_id: str) -> set[str]:
    page = await service.list_contacts(space, actor, view_id=view_id)
    return {c.first_name or "" for c in page.contacts}


async def test_a_saved_view_keeps_its_field_after_a_rename_and_shows_the_current_key(
    service: ContactsService, space: str, agent: Actor
) -> None:
    field = await service.create_field(space, "score", "Score", "number")
    for name, score, email in [("low", "1", ""), ("high", "9", "h@x.io"), ("high_no_mail", "9", ""), ("none", "", "")]:
        await service.create_contact(space, agent, {"first_name": name, "email": email}, {"score": score})
    view = await service.create_view(space, agent, "high scorers", _score_view(), shared=False)
    assert await _listed(service, space, agent, str(view.id)) == {"high"}

    await service.update_field(space, agent, str(field.id), key="points")
    # A new field takes the old key (and another type): the view does not follow it.
    await service.create_field(space, "score", "Score", "text")
    assert await _listed(service, space, agent, str(view.id)) == {"high"}
    expected = Group(
        any=False,
        children=(
            FieldCond("points", FieldOp.GREATER_THAN, ("5",), field.id),
            Group(
                any=True,
                children=(FieldCond("email", FieldOp.IS_SET), FieldCond("points", FieldOp.EQUALS, ("1",), field.id)),
            ),
        ),
    )
    assert (await service.get_view(space, agent, str(view.id))).criteria == expected
    listed, _ = await service.list_views(space, agent, 10, "")
    assert [v.criteria for v in listed] == [expected]
    renamed = await service.update_view(space, agent, str(view.id), name="top", criteria=None, shared=None)
    assert renamed.criteria == expected


async def test_a_saved_view_naming_a_deleted_field_is_invalid_argument_naming_its_key_until_edited(
    service: ContactsService, space: str, agent: Actor
) -> None:
    field = await service.create_field(space, "score", "Score", "number")
    await service.create_contact(space, agent, {"first_name": "high"}, {"score": "9"})
    view = await service.create_view(space, agent, "high scorers", _score_view(), shared=False)
    await service.delete_field(space, agent, str(field.id))
    await service.create_field(space, "score", "Score", "number")  # same key, another field: not the view's
    with pytest.raises(InvalidArgument, match=rf"root\.0: custom field 'score' \(id {field.id}\) no longer exists"):
        await service.list_contacts(space, agent, view_id=str(view.id))
    edited = Group(any=False, children=(FieldCond("score", FieldOp.IS_SET),))
    await service.update_view(space, agent, str(view.id), name=None, criteria=edited, shared=None)
    assert await _listed(service, space, agent, str(view.id)) == set()


async def test_views_store_the_field_id_and_the_key_in_their_json(
    service: ContactsService, space: str, agent: Actor
) -> None:
    field = await service.create_field(space, "score", "Score", "number")
    view = await service.create_view(space, agent, "v", _score_view(), shared=False)
    async with service.repo.unit() as unit:
        stored = (
            await unit.session.execute(text("SELECT criteria FROM views WHERE id = :id"), {"id": view.id})
        ).scalar_one()
    assert stored == criteria_to_json(view.criteria)
    assert stored["all"][0] == {"field": {"name": "score", "op": "greater_than", "values": ["5"], "id": str(field.id)}}
    assert stored["all"][1]["any"][0] == {"field": {"name": "email", "op": "is_set", "values": []}}


async def test_validated_criteria_name_custom_fields_by_id_and_resolve_by_id(
    service: ContactsService, space: str, agent: Actor
) -> None:
    field = await service.create_field(space, "score", "Score", "number")
    await service.create_contact(space, agent, {"first_name": "high"}, {"score": "9"})
    by_key = Group(any=False, children=(FieldCond("score", FieldOp.GREATER_THAN, ("5",)),))
    stored = await service.validate_criteria(space, agent, by_key)
    assert stored == Group(any=False, children=(FieldCond("score", FieldOp.GREATER_THAN, ("5",), field.id),))
    await service.update_field(space, agent, str(field.id), key="points")
    page = await service.list_contacts(space, agent, criteria=stored)
    assert [c.first_name for c in page.contacts] == ["high"]
    with pytest.raises(InvalidArgument, match="unknown field 'score'"):
        await service.list_contacts(space, agent, criteria=by_key)
