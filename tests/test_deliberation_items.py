"""大家商量着办, fast: a decision item's own due date (限期 "before 1 May") on its case's work order, lapsing and
escalating through the case machinery; validated with field and reason. Temporary SQLite DB, no stack."""
from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN
from tests.test_deliberations import HELD, SESSION_1, carry_out, detail, district, flow_settle, write  # noqa: F401
from tests.test_routing_ladder import orders


def decided_deliberation(items: list[dict]) -> int:
    """A 居民自治 topic at 小南庄 with its required participants, decided by consensus with `items`; settled to
    办理事项 (or 反馈结果 without items)."""
    from services import deliberations
    d = write(deliberations.create, topic_type="self_governance", title="楼道堆物清理", description=None,
              location={"community": "小南庄社区"}, case_ids=[], actor="xiaonanzhuang")
    write(deliberations.invite, deliberation_id=d.id, actor="admin", participants=[
        {"type": "residents_committee", "unit": "xiaonanzhuang"}, {"type": "resident_rep", "name": "王大爷"}])
    write(deliberations.record_session, deliberation_id=d.id, actor="admin",
          body=SESSION_1 | {"decision": {"method": "consensus", "items": items}})
    flow_settle(d.id)
    return d.id


def dispatch(case_id: int) -> None:
    from hotline.db import session_scope
    from services import cases
    for step in (cases.collect, cases.dispatch):
        with session_scope() as s:
            step(s, case_id)


def test_an_item_due_date_is_its_work_orders_deadline_and_lapses_and_escalates_like_any(district):
    from hotline.clock import now
    from hotline.db import session_scope
    from services import cases
    due = (now() + timedelta(days=3)).replace(microsecond=0)
    d = decided_deliberation([
        {"unit": "xiaonanzhuang", "description": "五一前清空楼道堆物", "due_at": due},
        {"unit": "property_co", "description": "每月巡查楼道"}])
    shown = detail(d)
    assert shown["step"] == "carrying_out"
    assert shown["items"][0]["due_at"].endswith("+08:00") and shown["items"][1]["due_at"] is None
    with_due, without = carry_out(d)
    dispatch(with_due), dispatch(without)
    [order] = orders(with_due)
    assert (order.unit, order.reason) == ("xiaonanzhuang", "directed")
    assert order.due_at.replace(tzinfo=due.tzinfo) == due  # the item's own date, not sla.yaml's 20 working days
    assert order.respond_by.replace(tzinfo=due.tzinfo) <= due
    [other] = orders(without)
    assert other.due_at.replace(tzinfo=due.tzinfo) > due + timedelta(days=10)  # sla.yaml: deliberation_item

    # the deadline watch's query finds it lapsed after the date, and the case escalates to the street
    with session_scope() as s:
        lapsed = [(wo.id, which) for wo, which in cases.lapsed_deadlines(s, due + timedelta(minutes=1))]
        assert (order.id, "due") in lapsed and (other.id, "due") not in lapsed
        assert cases.signal_lapse(s, s.get(type(order), order.id), "due") is not None
    with session_scope() as s:
        cases.settle(s, with_due)
    escalated = orders(with_due)[-1]
    assert (escalated.unit, escalated.reason) == ("haidian_st", "escalation")  # the ladder's own time from here
    assert escalated.due_at.replace(tzinfo=due.tzinfo) != due


@pytest.mark.parametrize("due_at, message", [
    ("2020-05-01T00:00:00+08:00", "must be in the future"),
    ("2027-05-01T00:00:00", "UTC offset"),
    ("五一前", "datetime"),
])
def test_a_bad_item_due_date_is_a_422_naming_the_field(district, due_at, message):
    from services import deliberations
    d = write(deliberations.create, topic_type="self_governance", title="楼道堆物", description=None,
              location={"community": "小南庄社区"}, case_ids=[], actor="xiaonanzhuang")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    from api.main import create_app
    with TestClient(create_app()) as api:
        base = f"/api/deliberations/{d.id}"
        r = api.post(f"{base}/participants", headers=admin, json={"participants": [
            {"type": "residents_committee", "unit": "xiaonanzhuang"}, {"type": "resident_rep", "name": "王大爷"}]})
        assert r.status_code == 200, r.text
        r = api.post(f"{base}/sessions", headers=admin, json={
            "kind": "meeting", "held_at": "2026-11-12T19:00:00+08:00", "decision": {
                "method": "consensus", "items": [{"unit": "xiaonanzhuang", "description": "清理", "due_at": due_at}]}})
        assert r.status_code == 422, r.text
        [problem] = r.json()["detail"]
        assert problem["field"] == "decision.items.0.due_at" and message in problem["message"], problem
        assert api.get(base, headers=admin).json()["sessions"] == []  # nothing recorded
