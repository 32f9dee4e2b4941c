"""The criteria language: every criterion and operator, compiled to SQL, checked against a
reference filter written in plain Python over the same seeded random data."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from parley_contacts.domain import (
    ALLOWED_OPS,
    STANDARD_FIELDS,
    AssigneeCond,
    AssigneeMatch,
    ChannelCond,
    Contact,
    FieldCond,
    FieldOp,
    FieldType,
    Group,
    TagCond,
    TagMatch,
    TimeCond,
    TimeOp,
    TimeTarget,
    criteria_from_json,
    criteria_to_json,
    parse_datetime,
    resolve_criteria,
)
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService, IdentityInput
from parley_kit.db import session_factory
from parley_kit.directory import accept_any_assignee
from parley_kit.errors import InvalidArgument

SEED = 20261125
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
SPACE = "sp_criteria"
ME = Actor(subject="user:me", user_id="me")
CUSTOM = {
    "f_num": ("number", []),
    "f_date": ("date", []),
    "f_dt": ("datetime", []),
    "f_bool": ("checkbox", []),
    "f_list": ("list", ["red", "green", "blue"]),
    "f_text": ("text", []),
    "f_email": ("email", []),
    "f_phone": ("phone", []),
    "f_url": ("url", []),
}
# Standard fields that are not plain text (the others are).
STANDARD_TYPES = {"email": "email", "phone": "phone", "avatar_url": "url"}
NAMES = ["Ana", "anna", "Bob", "bobby", "Carl", "carla", "Zoe", "Ana Maria"]
# Phone numbers (E.164, as stored) with their national form where the contact's country is theirs.
PHONES = {
    "+33612345678": ("FR", "06 12 34 56 78"),
    "+33698765432": ("FR", "06.98.76.54.32"),
    "+14155550123": ("US", "(415) 555-0123"),
    "+14155550199": ("US", "415-555-0199"),
    "+5511987654321": ("BR", "(11) 98765-4321"),
}
URLS = ["https://example.com/a", "http://Example.com/B", "https://parley.io/x?y=1", "https://shop.example.org/cart"]
CHANNELS = [("ch-fb", 1), ("ch-ig", 2), ("ch-wa", 3)]
USERS, TEAMS = ["me", "u2", "u3"], ["t1", "t2"]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _maybe(rng: random.Random, value: Any, p: float = 0.7) -> Any:
    return value if rng.random() < p else None


def _formatted(rng: random.Random, e164: str) -> str:
    """An international phone number written with random grouping and separators (not E.164)."""
    digits, groups = e164[1:], []
    while digits:
        size = rng.randint(1, 4)
        groups.append(digits[:size])
        digits = digits[size:]
    return "+" + rng.choice([" ", "-", ".", " "]).join(groups)


def _raw_value(rng: random.Random, ftype: str) -> str:
    if ftype == "number":
        return str(rng.choice([-5, 0, 1, 2, 3, 10, 42]) + rng.choice([0, Decimal("0.5")]))
    if ftype == "date":
        return (date(2026, 1, 1) + timedelta(days=rng.randrange(0, 60))).isoformat()
    if ftype == "datetime":
        return (NOW - timedelta(hours=rng.randrange(0, 200))).isoformat()
    if ftype == "checkbox":
        return rng.choice(["true", "false"])
    if ftype == "list":
        return rng.choice(["red", "green", "blue"])
    if ftype == "email":
        return f"{rng.choice(['x', 'xy', 'y'])}@{rng.choice(['a.com', 'b.org'])}"
    if ftype == "phone":
        return _formatted(rng, rng.choice(list(PHONES)))
    if ftype == "url":
        return rng.choice(URLS)
    return rng.choice(["hello", "Hello world", "help", "yellow", "mellow fellow"])


@pytest.fixture(scope="module")
async def world(engine, sink) -> dict[str, Any]:
    """~160 contacts with random profiles, tags, values, identities, assignees and times."""
    clock = Clock()
    # Criteria over assignee ids: whether the ids exist is test_assignees.py's business, so any id is accepted.
    service = ContactsService(Repository(session_factory(engine), sink), clock=clock, assignees=accept_any_assignee)
    rng = random.Random(SEED)
    fields = {k: await service.create_field(SPACE, k, k, t, options=o) for k, (t, o) in CUSTOM.items()}
    tags = [await service.create_tag(SPACE, f"tag{i}") for i in range(5)]
    created: list[uuid.UUID] = []
    for i in range(160):
        clock.now = NOW - timedelta(hours=i * 3 + rng.randrange(3))
        country = _maybe(rng, rng.choice(["FR", "BR", "US"]))
        phone = rng.choice(list(PHONES))
        region, national = PHONES[phone]
        profile = {
            "first_name": _maybe(rng, rng.choice(NAMES)),
            "last_name": _maybe(rng, rng.choice(["Lima", "Smith", "smithson"])),
            "email": _maybe(rng, f"{rng.choice(['ana', 'bob', 'zed'])}{i % 4}@{rng.choice(['ex.com', 'mail.org'])}"),
            # E.164, spaced out, or national where the contact's country says which.
            "phone": _maybe(rng, rng.choice([phone, _formatted(rng, phone), national if country == region else phone])),
            "avatar_url": _maybe(rng, rng.choice(URLS), 0.5),
            "country": country,
            "language": _maybe(rng, rng.choice(["en", "fr", "pt-BR"])),
        }
        values = {k: _raw_value(rng, t) for k, (t, _) in CUSTOM.items() if rng.random() < 0.6}
        tag_ids = [str(t.id) for t in tags if rng.random() < 0.3]
        idents = [IdentityInput(ch, ty, f"{ch}-{i}") for ch, ty in CHANNELS if rng.random() < 0.4]
        contact = await service.create_contact(SPACE, ME, profile, values, tag_ids, idents)
        created.append(contact.id)
        if rng.random() < 0.6:
            await service.assign(
                SPACE,
                ME,
                [str(contact.id)],
                _maybe(rng, rng.choice(USERS)) or "",
                _maybe(rng, rng.choice(TEAMS), 0.4) or "",
            )
        if idents and rng.random() < 0.8:
            at = NOW - timedelta(hours=rng.randrange(0, 400))
            await service.upsert_by_identity(SPACE, ME, idents[0], {}, at)
    # Tags change after the values were written: counts that read the values' copy of the tags see it.
    for _ in range(40):
        chosen = [str(i) for i in rng.sample(created, 8)]
        tag = str(rng.choice(tags).id)
        added = rng.random() < 0.5
        await service.change_tags(SPACE, ME, chosen, [tag] if added else [], [] if added else [tag])
    clock.now = NOW
    everyone, token = [], ""
    while True:
        page = await service.list_contacts(SPACE, ME, page_size=500, page_token=token)
        everyone += page.contacts
        if not (token := page.next_token):
            break
    return {"service": service, "contacts": everyone, "fields": fields, "tags": tags, "rng": rng}


# -- the reference filter: plain Python, independent of the SQL compiler ------------------------------


def _typed(ftype: str, raw: str) -> Any:
    if ftype == "number":
        return Decimal(raw)
    if ftype == "date":
        return date.fromisoformat(raw)
    if ftype == "datetime":
        return parse_datetime(raw)
    if ftype == "checkbox":
        return raw == "true"
    return raw.lower()


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch in "0123456789")


def _phone_matches(value: str | None, op: FieldOp, operands: tuple[str, ...]) -> bool:
    """Phones compare on their digits, country code first; operands are written in international form.

    A '+' leading a CONTAINS operand pins it to the start (the country code); STARTS_WITH always is.
    """
    have = None if value is None else _digits(value)
    if op in (FieldOp.EQUALS, FieldOp.NOT_EQUALS):
        hit = have is not None and have in {_digits(o) for o in operands}
        return hit if op is FieldOp.EQUALS else not hit
    if have is None:
        return False
    want = _digits(operands[0])
    if op is FieldOp.STARTS_WITH or operands[0].strip().startswith("+"):
        return have.startswith(want)
    return want in have


def _ftype(name: str) -> str:
    return CUSTOM[name][0] if name in CUSTOM else STANDARD_TYPES.get(name, "text")


def matches(contact: Contact, node: Any, fields: dict[str, Any]) -> bool:
    if isinstance(node, Group):
        results = [matches(contact, c, fields) for c in node.children]
        return any(results) if node.any else all(results)
    if isinstance(node, TagCond):
        have, want = set(contact.tag_ids), set(node.tag_ids)
        return {TagMatch.ANY: bool(have & want), TagMatch.ALL: want <= have, TagMatch.NONE: not have & want}[node.match]
    if isinstance(node, ChannelCond):
        return any(i.channel_id in node.channel_ids or i.channel_type in node.channel_types for i in contact.identities)
    if isinstance(node, AssigneeCond):
        if node.match is AssigneeMatch.UNASSIGNED:
            return contact.assignee_user_id is None and contact.assignee_team_id is None
        if node.match is AssigneeMatch.ME:
            return contact.assignee_user_id == ME.user_id
        if node.match is AssigneeMatch.USER:
            return contact.assignee_user_id == node.id
        return contact.assignee_team_id == node.id
    if isinstance(node, TimeCond):
        value = contact.last_interaction_at if node.target is TimeTarget.LAST_INTERACTION else contact.created_at
        bound = node.at if node.at is not None else NOW - timedelta(seconds=node.seconds)
        if value is None:
            return False
        return value >= bound if node.op is TimeOp.WITHIN else value < bound
    assert isinstance(node, FieldCond)
    ftype = _ftype(node.field)
    standard = node.field in STANDARD_FIELDS
    value = contact.standard(node.field) if standard else contact.values.get(fields[node.field].id)
    if node.op is FieldOp.IS_SET:
        return value is not None
    if node.op is FieldOp.IS_NOT_SET:
        return value is None
    if ftype == "phone":
        return _phone_matches(value, node.op, node.values)
    operands = [_typed(ftype, v) for v in node.values]
    if ftype == "checkbox":
        hit = (True in operands and value is True) or (False in operands and value is not True)
        return hit if node.op is FieldOp.EQUALS else not hit
    if value is not None and ftype not in ("number", "date", "datetime"):
        value = str(value).lower()
    if node.op is FieldOp.NOT_EQUALS:
        return value is None or value not in operands
    if value is None:
        return False
    if node.op is FieldOp.EQUALS:
        return value in operands
    if node.op is FieldOp.CONTAINS:
        return operands[0] in value
    if node.op is FieldOp.STARTS_WITH:
        return value.startswith(operands[0])
    if node.op is FieldOp.GREATER_THAN:
        return value > operands[0]
    if node.op is FieldOp.LESS_THAN:
        return value < operands[0]
    return operands[0] <= value <= operands[1]


# -- generated conditions -------------------------------------------------------------------------


def _operand(rng: random.Random, name: str, op: FieldOp) -> tuple[str, ...]:
    ftype = _ftype(name)
    if op in (FieldOp.IS_SET, FieldOp.IS_NOT_SET):
        return ()
    if ftype == "phone" and op is FieldOp.CONTAINS:
        # '+1' (country code 1) and '1' (a 1 anywhere) differ; formatting is ignored.
        return (rng.choice(["12 34", "555-01", "+55", "55", "+1", "1", "(415)", "98.76"]),)
    if ftype == "phone" and op is FieldOp.STARTS_WITH:
        return (rng.choice(["+33", "33 6", "+1 (415)", "55 11", "1", "+5"]),)
    if op in (FieldOp.CONTAINS, FieldOp.STARTS_WITH):
        pool = {
            "first_name": ["an", "AN", "ob", "a m"],
            "last_name": ["smi", "ma"],
            "email": ["ana", "@ex", ".org"],
            "country": ["f", "R"],
            "language": ["pt", "-br"],
            "avatar_url": ["https://", "EXAMPLE.COM", "/b", "http:"],
            "f_text": ["hel", "ELL", "low f"],
            "f_email": ["x", "@b"],
            "f_url": ["https://", "Example", ".io/", "http://ex"],
        }.get(name, ["a"])
        return (rng.choice(pool),)
    if ftype == "phone":  # whole numbers, never in E.164 form; sometimes one absent from the data too
        present = _formatted(rng, rng.choice(list(PHONES)))
        return (present, "+44 20 7946 0958") if rng.random() < 0.3 else (present,)
    if ftype in ("text", "url") or name == "email":
        pool = {
            "first_name": NAMES,
            "last_name": ["LIMA", "smith"],
            "country": ["fr", "BR"],
            "language": ["EN", "pt-br"],
            "email": ["ana1@ex.com", "BOB2@MAIL.ORG", "zed3@ex.com"],
            "avatar_url": ["HTTPS://EXAMPLE.COM/A", "http://example.com/b", "https://nowhere.net/"],
            "f_url": ["https://example.com/A", "HTTPS://PARLEY.IO/X?Y=1", "https://shop.example.org/cart"],
            "f_text": ["hello", "HELP"],
        }[name]
        return tuple(rng.sample(pool, rng.choice([1, 2])))
    if op is FieldOp.BETWEEN:
        a, b = sorted((_raw_value(rng, ftype), _raw_value(rng, ftype)), key=lambda v: _typed(ftype, v))
        return (a, b)
    if op in (FieldOp.EQUALS, FieldOp.NOT_EQUALS):
        return tuple(_raw_value(rng, ftype) for _ in range(rng.choice([1, 1, 2])))
    return (_raw_value(rng, ftype),)


def every_condition(world: dict[str, Any]) -> list[Any]:
    rng = random.Random(SEED + 1)
    tags = [t.id for t in world["tags"]]
    conds: list[Any] = []
    for match in TagMatch:
        conds += [TagCond(match, (tags[0],)), TagCond(match, (tags[1], tags[2]))]
    for name in [*STANDARD_FIELDS, *CUSTOM]:
        for op in sorted(ALLOWED_OPS[FieldType(_ftype(name))]):
            for _ in range(3 if _ftype(name) in ("phone", "url") else 2):
                conds.append(FieldCond(name, op, _operand(rng, name, op)))
    conds += [
        ChannelCond(("ch-fb",)),
        ChannelCond(("ch-ig", "ch-wa")),
        ChannelCond((), (3,)),
        ChannelCond(("x",), (1,)),
    ]
    conds += [
        AssigneeCond(AssigneeMatch.ME),
        AssigneeCond(AssigneeMatch.UNASSIGNED),
        AssigneeCond(AssigneeMatch.USER, "u2"),
        AssigneeCond(AssigneeMatch.TEAM, "t1"),
    ]
    for target in TimeTarget:
        conds += [
            TimeCond(target, TimeOp.WITHIN, seconds=3600 * 100),
            TimeCond(target, TimeOp.BEFORE, seconds=3600 * 150),
            TimeCond(target, TimeOp.BEFORE, at=NOW - timedelta(hours=50)),
        ]
    return conds


async def _ids(world: dict[str, Any], group: Group, page_size: int = 40) -> set[uuid.UUID]:
    service: ContactsService = world["service"]
    out, token, seen = set(), "", 0
    while True:
        page = await service.list_contacts(SPACE, ME, criteria=group, page_size=page_size, page_token=token)
        assert [(c.created_at, c.id) for c in page.contacts] == sorted(
            ((c.created_at, c.id) for c in page.contacts), reverse=True
        )
        out |= {c.id for c in page.contacts}
        seen += len(page.contacts)
        assert seen == len(out)  # no contact twice across pages
        if not (token := page.next_token):
            assert page.total == len(out)
            return out


def _expected(world: dict[str, Any], group: Group) -> set[uuid.UUID]:
    return {c.id for c in world["contacts"] if matches(c, group, world["fields"])}


async def test_every_condition_matches_the_reference_filter(world: dict[str, Any]) -> None:
    conds = every_condition(world)
    covered = {(_ftype(c.field), c.op) for c in conds if isinstance(c, FieldCond)}
    assert covered == {(str(t), op) for t, ops in ALLOWED_OPS.items() for op in ops}  # every operator of every type
    assert {c.field for c in conds if isinstance(c, FieldCond)} == {*STANDARD_FIELDS, *CUSTOM}
    nontrivial = 0
    for cond in conds:
        group = Group(any=False, children=(cond,))
        expected = _expected(world, group)
        assert await _ids(world, group) == expected, cond
        nontrivial += 0 < len(expected) < len(world["contacts"])
    assert nontrivial > len(conds) * 0.7  # the data exercises the conditions, not just all/nothing


async def test_random_nested_and_or_groups_match_the_reference_filter(world: dict[str, Any]) -> None:
    rng = random.Random(SEED + 2)
    conds = every_condition(world)

    def tree(depth: int) -> Group:
        children: list[Any] = []
        for _ in range(rng.randint(1, 3)):
            children.append(tree(depth + 1) if depth < 3 and rng.random() < 0.35 else rng.choice(conds))
        return Group(any=rng.random() < 0.5, children=tuple(children))

    for _ in range(60):
        group = tree(1)
        # The JSON form (how views store criteria) round-trips to the same meaning.
        assert criteria_from_json(criteria_to_json(group)) == group
        assert await _ids(world, group) == _expected(world, group), criteria_to_json(group)


async def test_empty_criteria_match_everyone(world: dict[str, Any]) -> None:
    assert await _ids(world, Group(any=False)) == {c.id for c in world["contacts"]}


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (FieldCond("shoe_size", FieldOp.EQUALS, ("4",)), "unknown field 'shoe_size'"),
        (FieldCond("f_num", FieldOp.CONTAINS, ("4",)), "does not apply to number"),
        (FieldCond("f_list", FieldOp.GREATER_THAN, ("red",)), "does not apply to list"),
        (FieldCond("f_num", FieldOp.BETWEEN, ("4",)), "takes 2 value"),
        (FieldCond("f_num", FieldOp.BETWEEN, ("9", "4")), "lower bound first"),
        (FieldCond("f_num", FieldOp.GREATER_THAN, ("x",)), "not a number"),
        (FieldCond("f_date", FieldOp.LESS_THAN, ("yesterday",)), "YYYY-MM-DD"),
        (FieldCond("f_list", FieldOp.EQUALS, ("purple",)), "not one of the options"),
        (FieldCond("email", FieldOp.IS_SET, ("x",)), "takes 0 value"),
        (FieldCond("email", FieldOp.STARTS_WITH, ("a", "b")), "exactly one value"),
        # Whole-value operands no stored value could equal, named with their node.
        (FieldCond("phone", FieldOp.EQUALS, ("06 12 34 56 78",)), r"root\.0: field 'phone': '06 12 34 56 78' is not a"),
        (FieldCond("f_phone", FieldOp.NOT_EQUALS, ("+33612345678", "+1 2")), r"root\.0: field 'f_phone': '\+1 2'"),
        (FieldCond("email", FieldOp.EQUALS, ("ana",)), r"root\.0: field 'email': 'ana' is not an email address"),
        (FieldCond("f_email", FieldOp.NOT_EQUALS, ("x@",)), r"root\.0: field 'f_email': 'x@' is not an email"),
        (FieldCond("avatar_url", FieldOp.EQUALS, ("example.com/a",)), r"root\.0: field 'avatar_url': .* http\(s\) URL"),
        (FieldCond("f_url", FieldOp.NOT_EQUALS, ("ftp://x.org",)), r"root\.0: field 'f_url': .* http\(s\) URL"),
        (FieldCond("f_num", FieldOp.EQUALS, ("1", "x")), r"root\.0: field 'f_num': 'x' is not a number"),
        # Phone fragments are digits and formatting, with at most a leading '+'.
        (FieldCond("f_phone", FieldOp.CONTAINS, ("abc",)), r"root\.0: 'contains' on phone field 'f_phone'.*digits"),
        (FieldCond("phone", FieldOp.STARTS_WITH, ("+33+6",)), "not part of a phone number"),
        (FieldCond("phone", FieldOp.CONTAINS, ("+",)), "not part of a phone number"),
        (FieldCond("phone", FieldOp.STARTS_WITH, ("( )",)), "not part of a phone number"),
        (TagCond(TagMatch.ANY, ()), "at least one tag"),
        (TagCond(TagMatch.ANY, (uuid.uuid4(),)), "unknown tag"),
        (AssigneeCond(AssigneeMatch.USER, ""), "needs an id"),
        (TimeCond(TimeTarget.CREATED, TimeOp.WITHIN, seconds=0), "positive duration"),
        (ChannelCond(), "channel ids or channel types"),
    ],
)
async def test_malformed_criteria_are_invalid_argument_with_a_reason(
    world: dict[str, Any], cond: Any, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await world["service"].list_contacts(SPACE, ME, criteria=Group(any=False, children=(cond,)))


async def test_phone_operands_match_the_stored_e164_form_whatever_their_formatting(world: dict[str, Any]) -> None:
    phoned = {c.id for c in world["contacts"] if c.phone == "+33612345678"}
    assert phoned  # stored E.164, whether given spaced, national (country FR) or as is
    for written in ("+33 6 12 34 56 78", "+33.6.12.34.56.78", "+33 (6) 12-34-56-78"):
        equals = Group(any=False, children=(FieldCond("phone", FieldOp.EQUALS, (written,)),))
        assert await _ids(world, equals) == phoned, written
    for fragment in ("+33 6 12", "33 6 12", "336 12"):
        starts = Group(any=False, children=(FieldCond("phone", FieldOp.STARTS_WITH, (fragment,)),))
        assert await _ids(world, starts) == phoned, fragment
    pinned = Group(any=False, children=(FieldCond("phone", FieldOp.CONTAINS, ("+1",)),))
    anywhere = Group(any=False, children=(FieldCond("phone", FieldOp.CONTAINS, ("1",)),))
    american = {c.id for c in world["contacts"] if (c.phone or "").startswith("+1")}
    assert await _ids(world, pinned) == american < await _ids(world, anywhere)


async def test_too_deep_criteria_are_refused(world: dict[str, Any]) -> None:
    group = Group(any=False)
    for _ in range(6):
        group = Group(any=True, children=(group,))
    with pytest.raises(InvalidArgument, match="deeper"):
        await world["service"].list_contacts(SPACE, ME, criteria=group)


def _narrow_driver(cond: Any) -> bool:
    """Conditions the repository answers from the tag/value indexes (it plans those differently)."""
    if isinstance(cond, TagCond):
        return cond.match is not TagMatch.NONE
    if isinstance(cond, FieldCond) and cond.field in CUSTOM:
        if cond.op in (FieldOp.NOT_EQUALS, FieldOp.IS_NOT_SET):
            return False
        return not (CUSTOM[cond.field][0] == "checkbox" and "false" in cond.values)
    return False


async def test_and_or_of_tag_and_value_conditions_with_others_match_the_reference(world: dict[str, Any]) -> None:
    rng = random.Random(SEED + 3)
    conds = every_condition(world)
    drivers = [c for c in conds if _narrow_driver(c)]
    others = [c for c in conds if not _narrow_driver(c)]
    for _ in range(50):
        children = rng.sample(drivers, rng.randint(2, 3)) + rng.sample(others, rng.randint(0, 2))
        rng.shuffle(children)
        if rng.random() < 0.3:  # a nested OR among the others
            children.append(Group(any=True, children=tuple(rng.sample(conds, 2))))
        group = Group(any=False, children=tuple(children))
        assert await _ids(world, group, page_size=3) == _expected(world, group), criteria_to_json(group)
    for _ in range(20):
        group = Group(any=True, children=tuple(rng.sample(drivers, rng.randint(1, 3))))
        assert await _ids(world, group) == _expected(world, group), criteria_to_json(group)


async def test_explain_list_shows_the_page_plan_then_the_count_plan(world: dict[str, Any]) -> None:
    """What the benchmark prints for its slowest view: both plans, run (ANALYZE) under the list's settings."""
    service: ContactsService = world["service"]
    group = Group(any=False, children=(TagCond(TagMatch.ANY, (world["tags"][0].id,)), every_condition(world)[-1]))
    async with service.repo.unit() as unit:
        fields = {f.key: f for f in await service.repo.list_fields(unit.session, SPACE)}
        resolved = resolve_criteria(group, fields=fields, tag_ids={t.id for t in world["tags"]}, me=ME.user_id, now=NOW)
        page, count = (await service.repo.explain_list(unit.session, SPACE, resolved, None, 50)).split("\n\n")
    assert page.startswith("Limit") and "actual time" in page
    assert "Aggregate" in count.splitlines()[0] and "actual time" in count
