"""Queries: filters, keyset pagination, messages in order, inbox counts; metrics and reports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import resources_pb2 as res


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


async def _seed(app, stub, helpers, sp: str, contacts: list[str], *, at=None, per_contact: int = 1):
    """One conversation per contact (opened in list order); returns them by contact external id."""
    events = []
    base = at or datetime.now(UTC) - timedelta(minutes=10)
    for i, contact in enumerate(contacts):
        for j in range(per_contact):
            events.append(
                helpers.inbound(
                    sp,
                    f"ch-{sp}",
                    contact,
                    f"{contact}-{j}",
                    text=f"{contact} #{j}",
                    at=base + timedelta(seconds=i * 10 + j),
                )
            )
    await helpers.publish_inbound(app.rt.js, events)

    async def all_there():
        r = await stub.ListConversations(pb.ListConversationsRequest(page={"page_size": 200}))
        total = sum(c.metrics.incoming_messages for c in r.conversations)
        return r.conversations if len(r.conversations) == len(contacts) and total == len(events) else None

    convs = await helpers.wait_for(all_there)
    by_time = sorted(convs, key=lambda c: c.opened_at.ToDatetime())
    return dict(zip(contacts, by_time, strict=True))


async def _code(call):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def test_list_filters_and_keyset_pages_without_gaps_or_repeats(service, stub_for, helpers, admin) -> None:
    app, _ = service
    sp = await admin.space()
    me, u2, t1 = await admin.member(sp), await admin.member(sp), await admin.team(sp)
    agent = stub_for(sp, subject=f"user:{me}")
    convs = await _seed(app, agent, helpers, sp, [f"p{i}" for i in range(7)])
    await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=convs["p0"].conversation_id, user_id=me)
    )
    await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=convs["p1"].conversation_id, user_id=u2, team_id=t1)
    )
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=convs["p2"].conversation_id))

    seen, token, pages = [], "", 0
    while True:
        r = await agent.ListConversations(pb.ListConversationsRequest(page={"page_size": 3, "page_token": token}))
        assert r.page.total_count == 7
        seen += [c.conversation_id for c in r.conversations]
        pages += 1
        token = r.page.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 7
    # most recent activity first: the close of p2 is the latest activity, then the newest messages
    expected = ["p2", "p6", "p5", "p4", "p3", "p1", "p0"]
    assert seen == [convs[c].conversation_id for c in expected]

    async def ids(**kw):
        r = await agent.ListConversations(pb.ListConversationsRequest(**kw))
        return {c.conversation_id for c in r.conversations}

    assert await ids(status=res.CONVERSATION_STATUS_CLOSED) == {convs["p2"].conversation_id}
    assert len(await ids(status=res.CONVERSATION_STATUS_OPEN)) == 6
    assert await ids(assignee_user_id=me) == {convs["p0"].conversation_id}
    assert await ids(assignee_team_id=t1) == {convs["p1"].conversation_id}
    assert len(await ids(unassigned=True, status=res.CONVERSATION_STATUS_OPEN)) == 4
    assert await ids(contact_id=convs["p3"].contact_id) == {convs["p3"].conversation_id}
    assert len(await ids(channel_id=f"ch-{sp}")) == 7
    assert await ids(channel_id="other") == set()
    opened_order = await agent.ListConversations(
        pb.ListConversationsRequest(order=pb.CONVERSATION_ORDER_OPENED_AT_DESC)
    )
    assert opened_order.conversations[0].conversation_id == convs["p6"].conversation_id

    counts = await agent.GetInboxCounts(pb.GetInboxCountsRequest())
    assert (counts.open, counts.closed, counts.unassigned, counts.mine) == (6, 1, 4, 1)
    assert {(c.id, c.open) for c in counts.by_user} == {(me, 1), (u2, 1)}
    assert [(c.id, c.open) for c in counts.by_team] == [(t1, 1)]


async def test_bad_page_requests_are_refused_clearly(service, stub_for) -> None:
    stub = stub_for(space())
    code, details = await _code(stub.ListConversations(pb.ListConversationsRequest(page={"page_size": 1000})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "maximum" in details
    code, details = await _code(stub.ListConversations(pb.ListConversationsRequest(page={"page_token": "garbage!"})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details


async def test_page_token_of_another_query_is_refused(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    stub = stub_for(sp)
    await _seed(app, stub, helpers, sp, ["q1", "q2"])
    r = await stub.ListConversations(pb.ListConversationsRequest(page={"page_size": 1}))
    code, details = await _code(
        stub.ListConversations(
            pb.ListConversationsRequest(
                status=res.CONVERSATION_STATUS_OPEN, page={"page_token": r.page.next_page_token}
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "different query" in details


async def test_messages_come_in_provider_order_in_pages(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    stub = stub_for(sp)
    convs = await _seed(app, stub, helpers, sp, ["m1"], per_contact=7)
    cid = convs["m1"].conversation_id
    got = await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid, messages_page={"page_size": 3}))
    texts = [m.text for m in got.messages]
    token = got.messages_page.next_page_token
    assert got.messages_page.total_count == 7
    while token:
        r = await stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=cid, page={"page_size": 3, "page_token": token})
        )
        texts += [m.text for m in r.messages]
        token = r.page.next_page_token
    assert texts == [f"m1 #{j}" for j in range(7)]


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def test_metrics_and_report_over_a_controlled_history(service, stub_for, helpers, admin) -> None:
    app, _ = service
    sp = await admin.space()
    u1, t1 = await admin.member(sp), await admin.team(sp)
    owner = stub_for(sp, role="owner", subject="user:boss")
    agent = stub_for(sp, subject=f"user:{u1}")
    t0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    sales = (await owner.CreateClosingCategory(pb.CreateClosingCategoryRequest(name="Sales"))).category
    support = (await owner.CreateClosingCategory(pb.CreateClosingCategoryRequest(name="Support"))).category
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(sp, f"ch-{sp}", "r1", "r1-0", at=t0),
            helpers.inbound(sp, f"ch-{sp}", "r2", "r2-0", at=t0 + timedelta(hours=1)),
            helpers.inbound(sp, f"ch-{sp}", "r3", "r3-0", at=t0 + timedelta(days=1)),
            helpers.inbound(sp, f"ch-{sp}", "r4", "r4-0", at=t0 + timedelta(days=1, hours=1)),
        ],
    )

    async def four():
        r = await owner.ListConversations(pb.ListConversationsRequest())
        return sorted(r.conversations, key=lambda c: c.opened_at.ToDatetime()) if len(r.conversations) == 4 else None

    c1, c2, _c3, c4 = [c.conversation_id for c in await helpers.wait_for(four)]
    real = app.service.clock

    def at(dt: datetime) -> None:
        app.service.clock = lambda: dt

    try:
        at(t0 + timedelta(seconds=20))
        await agent.SendMessage(pb.SendMessageRequest(conversation_id=c1, text="hi"))  # FRT 20s
        at(t0 + timedelta(minutes=10))
        await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=c1, category_id=sales.category_id))
        at(t0 + timedelta(hours=1, seconds=30))
        await owner.AssignConversation(pb.AssignConversationRequest(conversation_id=c2, user_id=u1, team_id=t1))
        at(t0 + timedelta(hours=1, seconds=90))
        await agent.SendMessage(pb.SendMessageRequest(conversation_id=c2, text="hello"))  # FRT 90s
        at(t0 + timedelta(hours=1, minutes=30))
        await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=c2, category_id=support.category_id))
        at(t0 + timedelta(days=1, hours=3))
        await agent.SendMessage(pb.SendMessageRequest(conversation_id=c4, text="sorry"))  # FRT 2h
    finally:
        app.service.clock = real

    m2 = (await owner.GetConversation(pb.GetConversationRequest(conversation_id=c2))).conversation.metrics
    assert m2.first_response_time.ToTimedelta() == timedelta(seconds=90)
    assert m2.time_to_first_assignment.ToTimedelta() == timedelta(seconds=30)
    assert m2.resolution_time.ToTimedelta() == timedelta(minutes=30)
    assert (m2.incoming_messages, m2.outgoing_messages, m2.responses) == (1, 1, 1)
    assert m2.average_response_time.ToTimedelta() == timedelta(seconds=90)

    code, _ = await _code(
        agent.GetReport(pb.GetReportRequest(start_time=_ts(t0), end_time=_ts(t0 + timedelta(days=1))))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    report = await owner.GetReport(
        pb.GetReportRequest(
            start_time=_ts(t0 - timedelta(hours=10)), end_time=_ts(t0 + timedelta(days=2)), period=pb.REPORT_PERIOD_DAY
        )
    )
    assert (report.opened, report.closed) == (4, 2)
    days = [(p.period_start.ToDatetime(tzinfo=UTC).date().isoformat(), p.opened, p.closed) for p in report.periods]
    assert days == [("2026-11-02", 2, 2), ("2026-11-03", 2, 0), ("2026-11-04", 0, 0)]
    assert sorted((c.category_name, c.closed) for c in report.by_category) == [("Sales", 1), ("Support", 1)]
    (by_u1,) = report.by_user
    assert (by_u1.id, by_u1.opened, by_u1.closed) == (u1, 1, 1)
    assert by_u1.average_first_response_time.ToTimedelta() == timedelta(seconds=90)
    assert [(t.id, t.closed) for t in report.by_team] == [(t1, 1)]
    frt = report.first_response_time
    assert frt.count == 3 and frt.median.ToTimedelta() == timedelta(seconds=90)
    assert abs(frt.average.ToTimedelta().total_seconds() - (20 + 90 + 7200) / 3) < 0.01
    assert report.resolution_time.count == 2 and report.resolution_time.median.ToTimedelta() == timedelta(minutes=20)
    buckets = {b.label: b.count for b in report.first_response_buckets}
    assert buckets == {"<30s": 1, "30s-2m": 1, "2-5m": 0, "5-10m": 0, "10-30m": 0, "30m-1h": 0, ">1h": 1}

    local = await owner.GetReport(
        pb.GetReportRequest(
            start_time=_ts(t0), end_time=_ts(t0 + timedelta(days=7)), period=pb.REPORT_PERIOD_WEEK,
            time_zone="America/New_York",
        )
    )  # fmt: skip
    assert local.periods[0].period_start.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # Monday
    code, _ = await _code(owner.GetReport(pb.GetReportRequest(start_time=_ts(t0), end_time=_ts(t0), time_zone="UTC")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = await _code(
        owner.GetReport(
            pb.GetReportRequest(start_time=_ts(t0), end_time=_ts(t0 + timedelta(days=1)), time_zone="Mars/Base")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "time zone" in details
