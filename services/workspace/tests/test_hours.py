"""Business hours in the space's time zone, exceptions, and whether any agent is online."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.workspace.v1 import availability_service_pb2 as av
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import user_service_pb2 as us
from parley_kit.errors import InvalidArgument
from parley_workspace import hours as bh

from .conftest import PASSWORD, ROLE, Workspace, unique_email

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
NINE_TO_FIVE = {d: [(9 * 60, 17 * 60)] for d in range(1, 6)}


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-11-23T08:30", True),  # Monday 09:30 in Paris (UTC+1)
        ("2026-11-23T07:59", False),  # Monday 08:59
        ("2026-11-23T15:59", True),  # 16:59
        ("2026-11-23T16:00", False),  # 17:00: closes is exclusive
        ("2026-11-28T10:00", False),  # Saturday
        ("2026-07-06T07:30", True),  # Monday 09:30 in summer (UTC+2)
        ("2026-07-06T15:30", False),  # Monday 17:30 in summer
    ],
)
def test_weekly_hours_follow_the_space_time_zone_and_its_summer_time(instant: str, expected: bool) -> None:
    assert bh.is_open(at(instant), PARIS, NINE_TO_FIVE, {}).open is expected


def test_dst_change_in_new_york_moves_opening_by_an_hour_in_utc() -> None:
    ny = ZoneInfo("America/New_York")  # DST starts 2026-03-08
    assert not bh.is_open(at("2026-03-06T13:30"), ny, NINE_TO_FIVE, {}).open  # Fri 08:30 EST
    assert bh.is_open(at("2026-03-09T13:30"), ny, NINE_TO_FIVE, {}).open  # Mon 09:30 EDT


def test_exceptions_override_the_weekday_by_local_date() -> None:
    monday, sunday = dt.date(2026, 11, 23), dt.date(2026, 11, 29)
    exceptions = {monday: ("Holiday", []), sunday: ("Sale", [(10 * 60, 12 * 60)])}
    closed = bh.is_open(at("2026-11-23T10:00"), PARIS, NINE_TO_FIVE, exceptions)
    assert not closed.open and closed.exception_name == "Holiday"
    assert bh.is_open(at("2026-11-29T09:30"), PARIS, NINE_TO_FIVE, exceptions).open  # Sunday 10:30 local
    assert not bh.is_open(at("2026-11-29T11:00"), PARIS, NINE_TO_FIVE, exceptions).open  # 12:00 local
    # the date is the local one: 23:30 UTC on the 22nd is already Monday the 23rd in Paris
    assert bh.is_open(at("2026-11-22T23:30"), PARIS, {}, exceptions).exception_name == "Holiday"


def test_without_weekly_hours_the_space_counts_as_open_except_on_closed_dates() -> None:
    decision = bh.is_open(at("2026-11-28T03:00"), PARIS, {}, {})
    assert decision.open and not decision.configured
    assert not bh.is_open(at("2026-12-25T12:00"), PARIS, {}, {dt.date(2026, 12, 25): ("Christmas", [])}).open


def test_ranges_are_validated() -> None:
    assert bh.normalise_ranges([("13:00", "24:00"), ("08:00", "12:00")], "mon") == [(480, 720), (780, 1440)]
    for bad in (
        [("12:00", "12:00")],
        [("09:00", "12:00"), ("11:59", "13:00")],
        [("9:00", "12:00")],
        [("24:00", "24:00")],
    ):
        with pytest.raises(InvalidArgument):
            bh.normalise_ranges(bad, "mon")


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
ranges_strategy = st.lists(
    st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda r: r[0] < r[1]), max_size=3
).map(lambda rs: sorted(rs))


@settings(max_examples=300, deadline=None)
@given(
    instant=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(ZONES),
    weekly=st.dictionaries(st.integers(1, 7), ranges_strategy, min_size=1),
    closed_today=st.booleans(),
)
def test_decision_matches_the_local_wall_clock(
    instant: dt.datetime, zone: str, weekly: dict[int, list[tuple[int, int]]], closed_today: bool
) -> None:
    tz = ZoneInfo(zone)
    wall = dt.datetime.fromtimestamp(instant.timestamp(), tz)
    minute = int(wall.strftime("%H")) * 60 + int(wall.strftime("%M"))
    exceptions = {wall.date(): ("Closed", [])} if closed_today else {}
    decision = bh.is_open(instant, tz, weekly, exceptions)
    configured = any(weekly.values())
    expected = (not closed_today) and (
        not configured or any(o <= minute < c for o, c in weekly.get(int(wall.strftime("%u")), []))
    )
    assert decision.open is expected
    assert decision.local_time.utcoffset() == wall.utcoffset()


def stamp(text: str) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(at(text))
    return value


async def test_check_availability_answers_hours_and_online_agents(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    owner = boot.tokens.access_token
    agent = await workspace.call(
        "users",
        "CreateUser",
        us.CreateUserRequest(email=unique_email("agent"), password=PASSWORD, role=ROLE["agent"]),
        owner,
    )
    weekly = [
        res.WeekdayHours(
            day=day, ranges=[res.TimeRange(opens="09:00", closes="12:30"), res.TimeRange(opens="13:30", closes="18:00")]
        )
        for day in (
            res.WEEKDAY_MONDAY,
            res.WEEKDAY_TUESDAY,
            res.WEEKDAY_WEDNESDAY,
            res.WEEKDAY_THURSDAY,
            res.WEEKDAY_FRIDAY,
        )
    ]
    hours = await workspace.call(
        "availability", "SetBusinessHours", av.SetBusinessHoursRequest(time_zone="Asia/Tokyo", weekly=weekly), owner
    )
    assert hours.business_hours.configured and hours.business_hours.time_zone == "Asia/Tokyo"
    await workspace.call(
        "availability",
        "SetBusinessHoursException",
        av.SetBusinessHoursExceptionRequest(
            exception=res.BusinessHoursException(date="2026-11-23", name="Labour Thanksgiving")
        ),
        owner,
    )

    async def check(instant: str) -> av.CheckAvailabilityResponse:
        return await workspace.call(
            "availability", "CheckAvailability", av.CheckAvailabilityRequest(at=stamp(instant)), owner
        )

    lunch = await check("2026-11-24T03:45")  # Tuesday 12:45 in Tokyo
    assert (
        not lunch.within_business_hours and lunch.local_time.startswith("2026-11-24T12:45") and lunch.hours_configured
    )
    afternoon = await check("2026-11-24T05:00")  # 14:00
    assert afternoon.within_business_hours and not afternoon.any_agent_online and afternoon.online_agent_count == 0
    holiday = await check("2026-11-23T01:00")  # Monday 10:00, a holiday
    assert not holiday.within_business_hours and holiday.exception_name == "Labour Thanksgiving"

    await workspace.call(
        "availability",
        "SetAvailability",
        av.SetAvailabilityRequest(user_id=agent.user.id, status=res.AVAILABILITY_STATUS_ONLINE),
        owner,
    )
    online = await check("2026-11-24T05:00")
    assert online.any_agent_online and online.online_agent_count == 1
    away = await workspace.call(
        "availability",
        "SetAvailability",
        av.SetAvailabilityRequest(user_id=agent.user.id, status=res.AVAILABILITY_STATUS_AWAY),
        owner,
    )
    assert away.changed and away.member.availability == res.AVAILABILITY_STATUS_AWAY
    assert not (await check("2026-11-24T05:00")).any_agent_online
    listed = await workspace.call(
        "availability", "ListAvailability", av.ListAvailabilityRequest(status=res.AVAILABILITY_STATUS_AWAY), owner
    )
    assert [m.user_id for m in listed.members] == [agent.user.id]
    removed = await workspace.call(
        "availability", "DeleteBusinessHoursException", av.DeleteBusinessHoursExceptionRequest(date="2026-11-23"), owner
    )
    assert not removed.business_hours.exceptions
    assert (await check("2026-11-23T01:00")).within_business_hours
    space = await workspace.call("spaces", "GetSpace", sp.GetSpaceRequest(), owner)
    assert space.space.time_zone == "Asia/Tokyo"
