"""Contacts CRUD, erasure, keyset listing and prefix search."""

from __future__ import annotations

import pytest
from parley_contacts.service import Actor, ContactsService, IdentityInput
from parley_kit.errors import AlreadyExists, InvalidArgument, NotFound


async def test_create_normalizes_and_get_returns_the_contact(
    service: ContactsService, space: str, agent: Actor
) -> None:
    c = await service.create_contact(
        space, agent, {"first_name": " Ana ", "email": "ana@example.com", "phone": "06 12 34 56 78", "country": "fr"}
    )
    got, _ = await service.get_contact(space, str(c.id))
    assert (got.first_name, got.phone, got.country) == ("Ana", "+33612345678", "FR")


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        ({"email": "nope"}, "email"),
        ({"phone": "12"}, "phone"),
        ({"country": "France"}, "country"),
        ({"language": "english!"}, "language"),
        ({"avatar_url": "javascript:alert(1)"}, "avatar_url"),
        ({"nickname": "x"}, "nickname"),
    ],
)
async def test_invalid_standard_field_is_invalid_argument_naming_it(
    service: ContactsService, space: str, agent: Actor, profile: dict, reason: str
) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        await service.create_contact(space, agent, profile)
    assert (await service.list_contacts(space, agent)).total == 0


async def test_update_emits_changed_fields_with_old_and_new_values(
    service: ContactsService, space: str, agent: Actor, sink
) -> None:
    c = await service.create_contact(space, agent, {"first_name": "Ana", "last_name": "Lima"})
    await service.update_contact(space, agent, str(c.id), {"first_name": "Anita", "last_name": "Lima", "email": ""})
    (event,) = sink.of("contact.updated", space)
    assert [(ch.field, ch.old, ch.new) for ch in event.data["changes"]] == [("first_name", "Ana", "Anita")]
    await service.update_contact(space, agent, str(c.id), {"last_name": ""})
    got, _ = await service.get_contact(space, str(c.id))
    assert got.last_name is None
    assert len(sink.of("contact.updated", space)) == 2


async def test_delete_erases_contact_identities_values_and_tags(
    service: ContactsService, space: str, agent: Actor, sink
) -> None:
    field = await service.create_field(space, "plan", "Plan", "text")
    tag = await service.create_tag(space, "vip")
    c = await service.create_contact(
        space, agent, {"first_name": "Ana"}, {"plan": "gold"}, [str(tag.id)], [IdentityInput("ch", 1, "psid-9")]
    )
    await service.delete_contact(space, agent, str(c.id))
    with pytest.raises(NotFound):
        await service.get_contact(space, str(c.id))
    (event,) = sink.of("contact.deleted", space)
    assert event.data["contact"].identities[0].external_id == "psid-9"
    # The identity is free again: a new message creates a fresh contact.
    new_id, created = await service.upsert_by_identity(space, agent, IdentityInput("ch", 1, "psid-9"), {}, None)
    assert created and new_id != c.id
    fresh, _ = await service.get_contact(space, str(new_id))
    assert fresh.values == {} and fresh.tag_ids == ()
    assert field.id not in fresh.values


async def test_another_spaces_contact_is_not_found(service: ContactsService, space: str, agent: Actor) -> None:
    c = await service.create_contact(space, agent, {"first_name": "Ana"})
    other = space + "-x"
    with pytest.raises(NotFound):
        await service.get_contact(other, str(c.id))
    with pytest.raises(NotFound):
        await service.update_contact(other, agent, str(c.id), {"first_name": "Eve"})
    with pytest.raises(NotFound):
        await service.delete_contact(other, agent, str(c.id))
    got, _ = await service.get_contact(space, str(c.id))
    assert got.first_name == "Ana"


async def test_identity_taken_by_another_contact_is_already_exists(
    service: ContactsService, space: str, agent: Actor
) -> None:
    await service.create_contact(space, agent, {}, identities=[IdentityInput("ch", 1, "dup")])
    with pytest.raises(AlreadyExists):
        await service.create_contact(space, agent, {"first_name": "B"}, identities=[IdentityInput("ch", 1, "dup")])
    assert (await service.list_contacts(space, agent)).total == 1


async def test_keyset_pages_cover_every_contact_once_in_stable_order(
    service: ContactsService, space: str, agent: Actor
) -> None:
    created = [await service.create_contact(space, agent, {"first_name": f"n{i}"}) for i in range(23)]
    seen, token = [], ""
    while True:
        page = await service.list_contacts(space, agent, page_size=5, page_token=token)
        assert page.total == 23
        seen += [c.id for c in page.contacts]
        token = page.next_token
        if not token:
            break
    expected = [c.id for c in sorted(created, key=lambda c: (c.created_at, c.id), reverse=True)]
    assert seen == expected


async def test_oversized_page_or_foreign_token_is_invalid_argument(
    service: ContactsService, space: str, agent: Actor
) -> None:
    with pytest.raises(InvalidArgument, match="maximum"):
        await service.list_contacts(space, agent, page_size=501)
    with pytest.raises(InvalidArgument, match="malformed"):
        await service.list_contacts(space, agent, page_token="garbage!")
    for i in range(3):
        await service.create_contact(space, agent, {"first_name": f"n{i}"})
    page = await service.list_contacts(space, agent, page_size=1)
    with pytest.raises(InvalidArgument, match="different query"):
        await service.list_contacts(space, agent, page_size=1, page_token=page.next_token, search="x")


async def test_search_is_prefix_and_case_insensitive_over_name_email_phone_and_external_id(
    service: ContactsService, space: str, agent: Actor
) -> None:
    ana = await service.create_contact(space, agent, {"first_name": "Ana", "last_name": "Lima"})
    bob = await service.create_contact(space, agent, {"first_name": "Bob", "email": "Bob.Smith@Example.com"})
    cid = await service.create_contact(space, agent, {"phone": "+447911123456"})
    dan = await service.create_contact(
        space, agent, {"first_name": "Dan"}, identities=[IdentityInput("c", 3, "WA-5511")]
    )
    await service.create_contact(space, agent, {"first_name": "100%_real"})

    async def ids(q: str) -> set:
        return {c.id for c in (await service.list_contacts(space, agent, search=q)).contacts}

    assert await ids("an") == {ana.id}
    assert await ids("ANA LI") == {ana.id}
    assert await ids("lim") == {ana.id}
    assert await ids("bob.s") == {bob.id}
    assert await ids("+44 7911") == {cid.id}
    assert await ids("447911") == {cid.id}
    assert await ids("wa-55") == {dan.id}
    assert await ids("ima") == set()  # prefix, not substring
    assert await ids("1%") == set()  # wildcards are literal
    assert len(await ids("100%_")) == 1


async def test_count_limit_caps_total_and_says_so(engine, sink, space: str, agent: Actor) -> None:
    from parley_contacts.repository import Repository
    from parley_kit.db import session_factory

    capped = ContactsService(Repository(session_factory(engine), sink), count_limit=3)
    for i in range(5):
        await capped.create_contact(space, agent, {"first_name": f"n{i}"})
    page = await capped.list_contacts(space, agent, page_size=2)
    assert (page.total, page.total_capped) == (3, True)
    small = await capped.list_contacts(space, agent, search="n4")
    assert (small.total, small.total_capped) == (1, False)
