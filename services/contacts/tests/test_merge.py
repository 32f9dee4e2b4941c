"""Merging two contacts: identities, tags and values move; the survivor's values win; the
merged id keeps resolving to the survivor; one contact.merged event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from parley_contacts.domain import MAX_TAGS_PER_CONTACT
from parley_contacts.service import Actor, ContactsService, IdentityInput
from parley_kit.errors import FailedPrecondition, InvalidArgument, NotFound


async def test_merge_moves_identities_tags_values_and_survivor_wins_conflicts(
    service: ContactsService, space: str, manager: Actor, sink, admin
) -> None:
    juan = await admin.member(space)
    plan = await service.create_field(space, "plan", "Plan", "text")
    score = await service.create_field(space, "score", "Score", "number")
    vip, new = await service.create_tag(space, "vip"), await service.create_tag(space, "new")
    survivor = await service.create_contact(
        space,
        manager,
        {"first_name": "Ana", "email": None},
        {"plan": "gold"},
        [str(vip.id)],
        [IdentityInput("ch-fb", 1, "psid-a")],
    )
    merged = await service.create_contact(
        space,
        manager,
        {"first_name": "Anna", "email": "ana@x.com"},
        {"plan": "free", "score": "7"},
        [str(vip.id), str(new.id)],
        [IdentityInput("ch-wa", 3, "wa-a")],
    )
    await service.assign(space, manager, [str(merged.id)], juan, "")
    at = datetime(2026, 11, 20, tzinfo=UTC)
    await service.upsert_by_identity(space, manager, IdentityInput("ch-wa", 3, "wa-a"), {}, at)
    before = len(sink.events)

    result = await service.merge(space, manager, str(survivor.id), str(merged.id))

    assert result.id == survivor.id
    assert result.first_name == "Ana" and result.email == "ana@x.com"
    assert result.values == {plan.id: "gold", score.id: 7}
    assert set(result.tag_ids) == {vip.id, new.id}
    assert {i.external_id for i in result.identities} == {"psid-a", "wa-a"}
    assert result.assignee_user_id == juan
    assert result.last_interaction_at == at
    assert result.created_at == survivor.created_at
    # The merged id keeps resolving to the survivor, for reads and writes alike.
    again, _ = await service.get_contact(space, str(merged.id))
    assert again.id == survivor.id
    await service.update_contact(space, manager, str(merged.id), {"last_name": "Lima"})
    assert (await service.get_contact(space, str(survivor.id)))[0].last_name == "Lima"
    # Inbound messages on the merged contact's identity now land on the survivor.
    cid, created = await service.upsert_by_identity(space, manager, IdentityInput("ch-wa", 3, "wa-a"), {}, None)
    assert (cid, created) == (survivor.id, False)
    new_events = sink.events[before:]
    assert [e.kind for e in new_events].count("contact.merged") == 1
    assert new_events[0].kind == "contact.merged"
    assert (await service.list_contacts(space, manager)).total == 1


async def test_chained_merges_resolve_to_the_last_survivor(
    service: ContactsService, space: str, manager: Actor
) -> None:
    a, b, c = [await service.create_contact(space, manager, {"first_name": n}) for n in "abc"]
    await service.merge(space, manager, str(b.id), str(a.id))
    await service.merge(space, manager, str(c.id), str(b.id))
    for old in (a, b):
        got, _ = await service.get_contact(space, str(old.id))
        assert got.id == c.id


async def test_merge_refuses_self_and_foreign_contacts(service: ContactsService, space: str, manager: Actor) -> None:
    a = await service.create_contact(space, manager, {"first_name": "a"})
    foreign = await service.create_contact(space + "-x", manager, {"first_name": "f"})
    with pytest.raises(InvalidArgument):
        await service.merge(space, manager, str(a.id), str(a.id))
    with pytest.raises(NotFound):
        await service.merge(space, manager, str(a.id), str(foreign.id))
    assert (await service.get_contact(space + "-x", str(foreign.id)))[0].first_name == "f"


async def test_deleting_the_survivor_makes_merged_ids_not_found(
    service: ContactsService, space: str, manager: Actor
) -> None:
    a, b = [await service.create_contact(space, manager, {"first_name": n}) for n in "ab"]
    await service.merge(space, manager, str(b.id), str(a.id))
    await service.delete_contact(space, manager, str(a.id))  # deletes the survivor b through the alias
    for old in (a, b):
        with pytest.raises(NotFound):
            await service.get_contact(space, str(old.id))


async def test_bulk_calls_resolve_merged_ids_to_the_survivor_once_and_name_an_unknown_id(
    service: ContactsService, space: str, manager: Actor, admin
) -> None:
    juan = await admin.member(space)
    vip = await service.create_tag(space, "vip")
    survivor, merged, other = [await service.create_contact(space, manager, {}) for _ in range(3)]
    await service.merge(space, manager, str(survivor.id), str(merged.id))
    # The merged id and the survivor's are one contact: tagged and assigned once.
    ids = [str(merged.id), str(survivor.id), str(other.id)]
    assert await service.change_tags(space, manager, ids, [str(vip.id)], []) == 2
    assert await service.assign(space, manager, ids, juan, "") == 2
    foreign = await service.create_contact(space + "-x", manager, {})
    with pytest.raises(NotFound, match=str(foreign.id)):
        await service.change_tags(space, manager, [str(other.id), str(foreign.id)], [], [str(vip.id)])
    got, _ = await service.get_contact(space, str(other.id))
    assert got.tag_ids == (vip.id,)  # nothing changed


async def test_a_merge_counts_the_survivors_tags_still_being_removed_toward_the_cap(
    service: ContactsService, stored_tags, space: str, manager: Actor
) -> None:
    """The survivor keeps a deleted tag on its row until the background removes it: the union checked
    against the cap includes it (the merged contact's own pending ones go with it, and do not count)."""
    tags = [str((await service.create_tag(space, f"t{i:03}")).id) for i in range(MAX_TAGS_PER_CONTACT + 2)]
    survivor = await service.create_contact(space, manager, {}, {}, tags[:MAX_TAGS_PER_CONTACT])
    merged = await service.create_contact(space, manager, {}, {}, tags[MAX_TAGS_PER_CONTACT:])
    await service.delete_tag(space, manager, tags[0])  # pending on `survivor`
    await service.delete_tag(space, manager, tags[-1])  # pending on `merged`
    with pytest.raises(FailedPrecondition, match=f"contact {survivor.id} would have 101 tags.*not yet removed"):
        await service.merge(space, manager, str(survivor.id), str(merged.id))
    assert {len(t) for t in (await stored_tags(space)).values()} == {MAX_TAGS_PER_CONTACT, 2}
    await service.finish_tag_deletions()
    result = await service.merge(space, manager, str(survivor.id), str(merged.id))
    assert len(result.tag_ids) == MAX_TAGS_PER_CONTACT
    assert await stored_tags(space) == {survivor.id: set(result.tag_ids)}
