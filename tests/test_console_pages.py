"""The supervisor console's pages through FastAPI's TestClient on a temporary SQLite DB (the `db` fixture), no
stack: the queue's order and counts, take-over (包案) and close with the reason required, Chinese labels and local
times instead of machine values, and the delivery-problem / ops-alert page with its re-send and resolve.

The browser tests on the real stack are in tests/test_console.py."""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from tests.conftest import FAST_ADMIN_TOKEN

T0 = datetime(2026, 11, 24, 6, 5, tzinfo=timezone.utc)  # 14:05 in Beijing
_ref = itertools.count(1)


# ---------------------------------------------------------------- a small district built by hand

def seed_units() -> None:
    from hotline.db import session_scope
    from models import Unit
    with session_scope() as session:
        for code, name, level, parent in (("hd", "海淀区", "district", None), ("st_a", "甲街道", "street", "hd"),
                                          ("st_b", "乙街道", "street", "hd"), ("com_a", "甲社区", "community", "st_a"),
                                          ("water", "自来水公司", "utility", "hd")):
            session.add(Unit(code=code, name=name, level=level, parent=parent, token_hash=f"h-{code}",
                             webhook_secret="s", webhook_url="http://127.0.0.1:9/hook"))


def add_case(*, street: str | None = "st_a", urgency: str = "normal", status: str = "dispatched",
             lead_unit: str | None = "com_a") -> int:
    from hotline.db import session_scope
    from models import Case
    n = next(_ref)
    with session_scope() as session:
        case = Case(number=f"2026112400{n:04d}", source="hotline", source_ref=f"r{n}", category="sanitation",
                    description="楼道堆物", urgency=urgency, reported_at=T0, district="hd", street=street,
                    community="com_a" if street == "st_a" else None, status=status, lead_unit=lead_unit,
                    citizen_name="陈阿姨", citizen_phone="13912345678")
        session.add(case)
        session.flush()
        return case.id


def add_escalation(case_id: int, trigger: str, opened_at: datetime, from_unit: str = "com_a") -> int:
    from hotline.db import session_scope
    from models import Escalation
    with session_scope() as session:
        e = Escalation(case_id=case_id, trigger=trigger, from_unit=from_unit, to_unit="st_a", opened_at=opened_at)
        session.add(e)
        session.flush()
        return e.id


def add_staff(role: str, name: str) -> str:
    from hotline.db import session_scope
    from models.units import StaffRole
    from services import registry
    with session_scope() as session:
        return registry.create_staff(session=session, name=name, role=StaffRole(role), unit=None)


@pytest.fixture
def console(db) -> Iterator[TestClient]:
    """A TestClient for the app on the temporary DB, with the district's units registered."""
    from api.main import create_app
    seed_units()
    with TestClient(create_app()) as client:
        yield client


def login(client: TestClient, token: str) -> str:
    """Log in through the login form (with its CSRF token); returns the session's CSRF token for posts."""
    form = client.get("/console/login")
    r = client.post("/console/login", data={"token": token, "csrf": hidden_csrf(form.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    return hidden_csrf(client.get("/console").text)


def hidden_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def cells(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of the table with that id (tags stripped)."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    body = table.split("<tbody>", 1)[1]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def timeline_kinds(case_id: int) -> list[str]:
    from hotline.db import session_scope
    from models import TimelineEntry
    with session_scope() as session:
        return [t.kind for t in session.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id)
                                             .order_by(col(TimelineEntry.id)))]


def case_number(case_id: int) -> str:
    from hotline.db import session_scope
    from models import Case
    with session_scope() as session:
        return session.get(Case, case_id).number


def escalation(escalation_id: int):
    from hotline.db import session_scope
    from models import Escalation
    with session_scope() as session:
        return session.get(Escalation, escalation_id)


# ---------------------------------------------------------------- the queue

def test_the_queue_is_most_urgent_then_oldest_first_with_counts_per_trigger_and_street(console):
    login(console, FAST_ADMIN_TOKEN)
    h = timedelta(hours=1)
    normal_oldest = add_escalation(add_case(urgency="normal"), "overdue_response", T0 - 5 * h)
    emergency_new = add_escalation(add_case(urgency="emergency", street="st_b"), "bounced", T0 - 1 * h)
    urgent = add_escalation(add_case(urgency="urgent"), "overdue_response", T0 - 3 * h)
    emergency_old = add_escalation(add_case(urgency="emergency"), "overdue_completion", T0 - 2 * h)
    no_street = add_escalation(add_case(urgency="normal", street=None), "unroutable", T0 - 1 * h, from_unit=None)
    decided = add_escalation(add_case(urgency="emergency"), "overdue_response", T0 - 9 * h)
    from hotline.db import session_scope
    from models import Escalation
    with session_scope() as session:  # a decided escalation is no longer in the queue
        e = session.get(Escalation, decided)
        e.status = "decided"
        session.add(e)

    html = console.get("/console").text
    order = [int(i) for i in re.findall(r'<tr data-escalation="(\d+)">', html)]
    assert order == [emergency_old, emergency_new, urgent, normal_oldest, no_street]
    assert "待督办 5 件" in html
    counts = dict(re.findall(r'data-trigger="([a-z_]+)">[^<]+<span class="count">(\d+)</span>', html))
    assert counts == {"overdue_response": "2", "overdue_completion": "1", "bounced": "1", "unroutable": "1"}
    streets = re.findall(r'data-street="([a-z_]*)">([^<]+?) <span class="count">(\d+)</span>', html)
    assert streets == [("st_a", "甲街道", "3"), ("st_b", "乙街道", "1"), ("", "—", "1")]
    rows = cells(html, "queue")
    assert rows[0][1:5] == ["办理超时", "特急", "环境卫生", "甲街道"]
    assert rows[0][5:8] == ["甲社区", "甲街道", "11-24 12:05"]  # opened 04:05 UTC, shown in Beijing time

    html = console.get("/console", params={"trigger": "overdue_response"}).text
    assert [int(i) for i in re.findall(r'<tr data-escalation="(\d+)">', html)] == [urgent, normal_oldest]
    counts = dict(re.findall(r'data-trigger="([a-z_]+)">[^<]+<span class="count">(\d+)</span>', html))
    assert counts["bounced"] == "1"  # the counts stay those of the whole queue


def test_the_console_needs_a_login(console):
    r = console.get("/console", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    r = console.get("/console/ops", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


# ---------------------------------------------------------------- take over (包案) and close, reason required

def test_take_over_and_close_require_a_reason_and_record_it(console):
    from hotline.db import session_scope
    from models import Case, CaseSignal
    csrf = login(console, add_staff("supervisor", "王主任"))
    case_id = add_case(urgency="urgent")
    take, close = (add_escalation(case_id, "overdue_completion", T0),
                   add_escalation(case_id, "unsatisfied_twice", T0 + timedelta(minutes=1)))
    before = timeline_kinds(case_id)

    for action, esc in (("take_over", take), ("close", close)):
        for reason in ("", "   "):  # no reason, or only blanks: refused, nothing changes
            r = console.post(f"/console/escalations/{esc}/decision",
                             data={"csrf": csrf, "action": action, "reason": reason, "leader": "李书记"})
            assert r.status_code == 422
            assert "请填写理由" in r.text and "未做任何更改" in r.text
            assert escalation(esc).status == "open"
    r = console.post(f"/console/escalations/{take}/decision", data={"csrf": csrf, "action": "take_over",
                                                                    "reason": "多次反映, 领导包案"})
    assert r.status_code == 422 and "包案领导" in r.text  # 包案 names its leader
    r = console.post(f"/console/escalations/{take}/decision", data={"action": "take_over", "reason": "x",
                                                                    "leader": "李书记"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert timeline_kinds(case_id) == before and escalation(take).status == "open"

    r = console.post(f"/console/escalations/{take}/decision", follow_redirects=False,
                     data={"csrf": csrf, "action": "take_over", "reason": "多次反映, 领导包案", "leader": "李书记"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/cases/{case_id}?done=take_over"
    decided = escalation(take)
    assert decided.status == "decided" and decided.decided_by.endswith(":supervisor")
    assert decided.decision["reason"] == "多次反映, 领导包案" and decided.decision["leader"] == "李书记"
    with session_scope() as session:
        assert session.get(Case, case_id).taken_over_by == "李书记"

    r = console.post(f"/console/escalations/{close}/decision", follow_redirects=False,
                     data={"csrf": csrf, "action": "close", "reason": "已与诉求人达成一致"})
    assert r.status_code == 303
    assert escalation(close).status == "decided" and escalation(close).decision["reason"] == "已与诉求人达成一致"
    with session_scope() as session:  # the close goes to the case run as a decision signal
        [signal] = session.exec(select(CaseSignal).where(CaseSignal.case_id == case_id,
                                                         CaseSignal.kind == "decision")).all()
        assert signal.payload["action"] == "close" and signal.payload["reason"] == "已与诉求人达成一致"
    assert timeline_kinds(case_id)[len(before):] == ["taken_over", "escalation.decided", "escalation.decided"]

    page = console.get(f"/console/cases/{case_id}", params={"done": "close"}).text
    assert "已办结, 已记入时间线" in page
    timeline = cells(page, "timeline")[len(before):]
    assert timeline[0][1:] == ["包案", "督办 王主任", "包案: 李书记. 多次反映, 领导包案"]
    assert timeline[1][1:] == ["督办决定", "督办 王主任", "包案: 多次反映, 领导包案"]
    assert timeline[2][1:] == ["督办决定", "督办 王主任", "办结: 已与诉求人达成一致"]


# ---------------------------------------------------------------- labels

def test_the_case_page_shows_chinese_labels_unit_names_and_local_times(console):
    from hotline.db import session_scope
    from models import Delivery, TimelineEntry, WorkOrder
    login(console, FAST_ADMIN_TOKEN)
    case_id = add_case(urgency="emergency", status="dispatched", lead_unit="water")
    add_escalation(case_id, "overdue_response", T0)
    with session_scope() as session:
        session.add(WorkOrder(case_id=case_id, unit="com_a", role="lead", status="lapsed", reason="dispatch",
                              respond_by=T0, due_at=T0 + timedelta(hours=2), respond_lapsed=True))
        session.add(WorkOrder(case_id=case_id, unit="water", role="lead", status="assigned", reason="reassign",
                              respond_by=T0 + timedelta(hours=1), due_at=T0 + timedelta(days=1)))
        session.add(Delivery(msg_id="msg_x1", unit="water", case_id=case_id, event_type="work_order.assigned",
                             status="dead_letter", attempts=7, last_error="HTTP 503"))
        for kind, actor, note in (("unit.accept", "com_a", None), ("escalated", "system",
                                                                   "升级: overdue_response → st_a"),
                                  ("some.future_kind", "admin", None)):
            session.add(TimelineEntry(case_id=case_id, at=T0, kind=kind, actor=actor, note=note))

    html = console.get(f"/console/cases/{case_id}").text
    status = re.search(r'<span id="case-status">([^<]*)</span>', html).group(1)
    assert status == "已派单"
    assert cells(html, "work-orders") == [
        ["1", "甲社区 com_a", "主办", "已超时 超时", "11-24 14:05", "11-24 16:05", "派单"],
        ["2", "自来水公司 water", "主办", "待签收", "11-24 15:05", "11-25 14:05", "督办改派"]]
    assert cells(html, "deliveries") == [["自来水公司 water", "派单", "投递失败 (死信)", "7", "", "HTTP 503"]]
    assert cells(html, "timeline") == [["11-24 14:05", "签收", "甲社区", ""],
                                       ["11-24 14:05", "升级", "系统", "升级: 响应超时 → 甲街道"],
                                       ["11-24 14:05", "some.future_kind", "管理员", ""]]  # unknown: the code
    assert "响应超时" in html and "自来水公司" in html and "特急" in html
    for machine in (">dispatched<", ">lapsed", ">unit.accept<", ">overdue_response<", "T06:05", "+08:00"):
        assert machine not in html, machine
    assert "13912345678" not in html  # the citizen is masked
    assert '<option value="reassign">改派</option>' in html  # the form still posts the machine value


def test_labels_fall_back_to_the_code():
    from api.console import labels
    assert labels.zh("dispatched", "case_status") == "已派单"
    assert labels.zh("brand_new", "case_status") == "brand_new"
    assert labels.zh(None, "trigger") == "—"
    assert labels.when("2026-11-24T06:05:00+00:00") == "11-24 14:05"
    assert labels.when(T0) == "11-24 14:05" and labels.when(None) == "—"
    assert str(labels.unit_label("nowhere", {"st_a": "甲街道"})) == "nowhere"
    assert str(labels.unit_label("st_a", {"st_a": "<b>"})) == '&lt;b&gt; <small class="code">st_a</small>'
    assert labels.actor_label("staff:7:dispatcher", {}, {}) == "派单员 #7"


# ---------------------------------------------------------------- delivery problems and ops alerts

def seed_problems(case_id: int) -> dict[str, int]:
    from hotline.db import session_scope
    from models import Delivery, OpsAlert
    ids = {}
    with session_scope() as session:
        for status in ("dead_letter", "failed", "delivered", "pending"):
            d = Delivery(msg_id=f"msg_{status}_{case_id}", unit="water", case_id=case_id,
                         event_type="work_order.assigned", status=status, attempts=3,
                         last_status_code=400 if status == "failed" else None)
            session.add(d)
            session.flush()
            ids[status] = d.id
        open_alert = OpsAlert(kind="delivery_dead_letter", unit="water", delivery_id=ids["dead_letter"],
                              message="work_order.assigned msg_x to water still failing", created_at=T0)
        old_alert = OpsAlert(kind="webhook_gone", unit="st_b", message="gone", created_at=T0, resolved_at=T0)
        session.add_all([open_alert, old_alert])
        session.flush()
        ids["alert"], ids["old_alert"] = open_alert.id, old_alert.id
    return ids


def test_the_ops_page_lists_problems_and_resends_through_the_outbox(console):
    from hotline.db import session_scope
    from models import Delivery, OpsAlert
    case_id = add_case()
    ids = seed_problems(case_id)
    csrf = login(console, add_staff("supervisor", "王主任"))

    html = console.get("/console/ops").text
    listed = [int(i) for i in re.findall(r'<tr data-delivery="(\d+)">', html)]
    assert listed == [ids["failed"], ids["dead_letter"]]  # newest first; delivered and pending are not problems
    rows = cells(html, "problem-deliveries")
    assert rows[0][1:5] == ["自来水公司 water", "派单", case_number(case_id), "被拒收"]
    assert rows[1][4] == "投递失败 (死信)"
    assert [int(i) for i in re.findall(r'<tr data-alert="(\d+)">', html)] == [ids["alert"]]  # open ones only
    assert cells(html, "alerts")[0][1:4] == ["11-24 14:05", "推送失败 (死信)", "自来水公司 water"]
    assert "/resolve" not in html  # a supervisor re-sends; closing an alert is the admin's

    r = console.post(f"/console/deliveries/{ids['dead_letter']}/resend", data={})
    assert r.status_code == 403 and "CSRF" in r.text
    r = console.post(f"/console/deliveries/{ids['dead_letter']}/resend", data={"csrf": csrf},
                     follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/console/ops?resent={ids['dead_letter']}"
    with session_scope() as session:
        resent = session.get(Delivery, ids["dead_letter"])
        assert resent.status == "pending" and resent.resent_at is not None
        assert resent.msg_id == f"msg_dead_letter_{case_id}"  # the same webhook-id
    page = console.get(r.headers["location"]).text
    assert "已重新排队" in page and ids["dead_letter"] not in [
        int(i) for i in re.findall(r'<tr data-delivery="(\d+)">', page)]

    r = console.post(f"/console/deliveries/{ids['delivered']}/resend", data={"csrf": csrf})
    assert r.status_code == 409 and "不能重发" in r.text and "已送达" in r.text
    r = console.post("/console/deliveries/999999/resend", data={"csrf": csrf})
    assert r.status_code == 404
    r = console.post(f"/console/alerts/{ids['alert']}/resolve", data={"csrf": csrf})
    assert r.status_code == 403 and "管理员" in r.text
    with session_scope() as session:
        assert session.get(OpsAlert, ids["alert"]).resolved_at is None


def test_the_admin_resolves_an_alert_and_a_dispatcher_only_looks(console):
    from hotline.db import session_scope
    from models import Delivery, OpsAlert
    ids = seed_problems(add_case())
    dispatcher = TestClient(console.app)
    csrf = login(dispatcher, add_staff("dispatcher", "赵派单"))
    assert "投递失败 (死信)" in dispatcher.get("/console/ops").text
    r = dispatcher.post(f"/console/deliveries/{ids['failed']}/resend", data={"csrf": csrf})
    assert r.status_code == 403
    with session_scope() as session:
        assert session.get(Delivery, ids["failed"]).status == "failed"

    csrf = login(console, FAST_ADMIN_TOKEN)
    r = console.post(f"/console/alerts/{ids['alert']}/resolve", data={"csrf": "wrong"})
    assert r.status_code == 403
    r = console.post(f"/console/alerts/{ids['alert']}/resolve", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/console/ops?resolved={ids['alert']}"
    with session_scope() as session:
        alert = session.get(OpsAlert, ids["alert"])
        assert alert.resolved_at is not None and alert.resolved_by == "admin"
    page = console.get(r.headers["location"]).text
    assert "告警 #" in page and "没有未关闭的告警" in page
    assert console.post("/console/alerts/999999/resolve", data={"csrf": csrf}).status_code == 404
