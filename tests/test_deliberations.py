"""大家商量着办 without a stack: the deliberation service driven step by step as its flow and the API drive it, on a
temporary SQLite DB with the demo district registered through the API (tests/test_deliberation_flow.py runs the
same process on the real stack)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import col, select

from hotline.demo import register_district
from hotline.receiver import Receiver
from tests.conftest import FAST_ADMIN_TOKEN as ADMIN
from tests.test_routing_ladder import new_case, orders, timeline, unit_answers

HELD = datetime(2026, 11, 12, 11, 0, tzinfo=timezone.utc)  # 19:00 in Beijing


@pytest.fixture
def district(db, monkeypatch):
    """The demo district registered through the API; Prefect is not running (runs are started by the watch)."""
    from api.main import create_app
    from api.routes import deliberations as route
    from services import intake

    async def unreachable(*_args, **_kwargs):
        raise ConnectionError("no Prefect in the fast tests")
    monkeypatch.setattr(route, "start_deliberation_flow", unreachable)
    monkeypatch.setattr(intake, "start_case_flow", unreachable)
    with TestClient(create_app()) as api:
        return register_district(api, ADMIN, Receiver(port=9))


def write(fn, **kwargs):
    from hotline.db import session_scope
    with session_scope() as s:
        return fn(session=s, **kwargs)


def flow_settle(deliberation_id: int):
    """What the deliberation flow does when woken: apply the signals; returns the step."""
    from hotline.db import session_scope
    from services import deliberations
    with session_scope() as s:
        return deliberations.settle(s, deliberation_id).step


def carry_out(deliberation_id: int) -> list[int]:
    """The flow's carry-out step: each item through intake (Prefect unreachable: the case is recorded)."""
    from hotline.db import read_scope, session_scope
    from services import deliberations, intake
    with read_scope() as s:
        pending = deliberations.item_intakes(s, deliberation_id)
    ids = []
    for item_id, fields in pending:
        case_id = asyncio.run(intake.receive(fields)).case.id
        with session_scope() as s:
            deliberations.link_item_case(s, item_id, case_id)
        ids.append(case_id)
    return ids


def handle_item_case(case_id: int, unit: str) -> None:
    """The item case's own flow: collect, dispatch, the unit answers, close."""
    from hotline.db import session_scope
    from services import cases
    for step in (cases.collect, cases.dispatch):
        with session_scope() as s:
            step(s, case_id)
    unit_answers(case_id, unit, "accept", "contacted", "complete")
    with session_scope() as s:
        cases.evaluate_and_close(s, case_id)


def detail(deliberation_id: int) -> dict:
    from hotline.db import read_scope
    from services import deliberations
    with read_scope() as s:
        return deliberations.detail(s, deliberation_id)


def deliveries(event_type: str) -> list:
    from hotline.db import read_scope
    from models import Delivery
    with read_scope() as s:
        return list(s.exec(select(Delivery).where(Delivery.event_type == event_type).order_by(col(Delivery.id))))


SESSION_1 = {"kind": "talk", "held_at": HELD, "attendance": [], "residents_present": 52, "minutes": "路灯太亮, 影响一层住户休息",
             "opinions": [{"by": "3号楼居民", "text": "晚上10点后调暗"}, {"by": "物业", "text": "换低功率灯"},
                          {"by": "2号楼居民", "text": "加灯罩"}],
             "options": ["调暗", "换灯", "加灯罩"]}


def test_a_converted_case_goes_through_two_sessions_to_items_carried_out_as_cases(district):
    from services import deliberations
    from services.cases import Conflict

    case_id = new_case("street_lights")  # 路灯太亮 at 小南庄社区, already with its street
    d, created = write(deliberations.convert_case, case_id=case_id, topic_type="property", title="路灯太亮",
                       description=None, actor="staff:1:supervisor")
    assert created and d.number.startswith("SL") and d.community == "xiaonanzhuang"
    again, created = write(deliberations.convert_case, case_id=case_id, topic_type="property", title=None,
                           description=None, actor="staff:1:supervisor")
    assert (again.id, created) == (d.id, False)

    # the citizen is told, on the case's timeline, with a message that names no one
    [linked] = [t for t in timeline(case_id) if t.kind == "deliberation.linked"]
    assert d.number in linked.data["message"] and "大家商量着办" in linked.data["message"]
    assert "陈阿姨" not in linked.data["message"] and "1390000" not in linked.data["message"]

    with pytest.raises(Conflict, match="invite the participants first"):
        write(deliberations.record_session, deliberation_id=d.id, body=SESSION_1, actor="admin")

    invited = write(deliberations.invite, deliberation_id=d.id, actor="admin", participants=[
        {"type": "residents_committee", "unit": "xiaonanzhuang"},
        {"type": "resident_rep", "name": "王大爷", "contact": "13800001111"}])
    assert flow_settle(d.id) == "inviting"
    # 物业管理 needs the property company: the session is refused, naming it
    with pytest.raises(Conflict, match=r"物业公司 \(property_company\)"):
        write(deliberations.record_session, deliberation_id=d.id, body=SESSION_1, actor="admin")
    [company] = write(deliberations.invite, deliberation_id=d.id, actor="admin",
                      participants=[{"type": "property_company", "unit": "property_co"}])
    write(deliberations.answer_invitation, deliberation_id=d.id, participant_id=company.id, answer="declined",
          note="负责人出差", actor="property_co")
    with pytest.raises(Conflict, match="property_company"):  # a declined invitation does not count
        write(deliberations.record_session, deliberation_id=d.id, body=SESSION_1, actor="admin")
    write(deliberations.answer_invitation, deliberation_id=d.id, participant_id=company.id, answer="accepted",
          note=None, actor="property_co")

    # invitations: a webhook for each unit, a message text for the person; inviting again changes nothing
    assert sorted(x.unit for x in deliveries("deliberation.invited")) == ["property_co", "xiaonanzhuang"]
    rep = invited[1]
    assert "王大爷" in rep.invitation_text and "居民代表" in rep.invitation_text and d.number in rep.invitation_text
    write(deliberations.invite, deliberation_id=d.id, actor="admin",
          participants=[{"type": "resident_rep", "name": "王大爷"}, {"type": "property_company", "unit": "property_co"}])
    assert len(detail(d.id)["participants"]) == 3 and len(deliveries("deliberation.invited")) == 2

    ids = [int(p["participant_id"]) for p in detail(d.id)["participants"]]
    write(deliberations.record_session, deliberation_id=d.id, actor="admin", body=SESSION_1 | {"attendance": ids})
    assert flow_settle(d.id) == "deliberating"
    decision = {"method": "vote", "votes": {"for": 41, "against": 3, "abstain": 8}, "option": "换灯",
                "items": [{"unit": "property_co", "description": "一层住户窗前路灯换成低功率灯", "urgency": "normal"},
                          {"unit": "xiaonanzhuang", "description": "征求一层住户意见并回访", "urgency": "normal"}]}
    write(deliberations.record_session, deliberation_id=d.id, actor="admin",
          body=SESSION_1 | {"kind": "meeting", "attendance": ids, "decision": decision})
    assert flow_settle(d.id) == "carrying_out"
    with pytest.raises(Conflict, match="already decided"):
        write(deliberations.record_session, deliberation_id=d.id, actor="admin",
              body=SESSION_1 | {"decision": decision})

    # 办理事项: each item a case through intake, directed to its unit; a replay records nothing new
    item_cases = carry_out(d.id)
    assert len(item_cases) == 2 and carry_out(d.id) == []
    from services import intake
    fields = dict(zip(("source", "source_ref"), ("deliberation", f"{d.number}-item-1")))
    again = asyncio.run(intake.receive({**fields, "description": "x", "reported_at": HELD}))
    assert (again.case.id, again.created) == (item_cases[0], False)

    handle_item_case(item_cases[0], "property_co")
    [order] = orders(item_cases[0])
    assert (order.unit, order.reason) == ("property_co", "directed")
    from hotline.db import session_scope
    with session_scope() as s:
        assert deliberations.signal_items_done(s) == []  # the second item is still open
    handle_item_case(item_cases[1], "xiaonanzhuang")
    with session_scope() as s:
        assert deliberations.signal_items_done(s) == [d.id]
        assert deliberations.signal_items_done(s) == []  # once
    assert flow_settle(d.id) == "feedback"

    # 反馈结果: the result published (where and when), told to the participants and the linked citizen
    with pytest.raises(Conflict, match="publish it first"):
        write(deliberations.evaluate, deliberation_id=d.id, satisfaction="satisfied", resident=None, comment=None,
              actor="admin")
    write(deliberations.publish, deliberation_id=d.id, stage="decision", content="表决通过: 换低功率灯",
          place="社区公告栏", published_at=None, actor="admin")
    write(deliberations.publish, deliberation_id=d.id, stage="result", content="路灯已更换", place="社区公告栏",
          published_at=None, actor="admin")
    [told] = [t for t in timeline(case_id) if t.kind == "deliberation.result"]
    assert "路灯已更换" in told.data["message"] and "已办结" in told.data["message"]
    assert sorted(x.unit for x in deliveries("deliberation.result")) == ["property_co", "xiaonanzhuang"]
    flow_settle(d.id)
    write(deliberations.evaluate, deliberation_id=d.id, satisfaction="satisfied", resident="3号楼居民",
          comment="晚上能睡好了", actor="admin")

    shown = detail(d.id)
    assert shown["step"] == "feedback" and shown["concluded_at"]
    assert [s["kind"] for s in shown["sessions"]] == ["talk", "meeting"]
    assert len(shown["sessions"][0]["opinions"]) == 3 and shown["sessions"][1]["decision"]["votes"]["for"] == 41
    assert [(i["unit"], i["case_status"]) for i in shown["items"]] == [("property_co", "closed"),
                                                                       ("xiaonanzhuang", "closed")]
    assert [p["stage"] for p in shown["publicity"]] == ["decision", "result"]
    assert shown["evaluations"]["by_satisfaction"]["satisfied"] == 1
    steps = [t["data"]["to_step"] for t in shown["timeline"] if t["kind"] == "step"]
    assert steps == ["inviting", "deliberating", "carrying_out", "feedback"]
    assert sum(t["kind"] == "concluded" for t in shown["timeline"]) == 1
    flow_settle(d.id)  # a replay of the flow changes nothing
    assert detail(d.id)["timeline"] == shown["timeline"]

    # the console shows the step, the participants, both sessions and the items with their cases' status
    from api.main import create_app
    from tests.test_console_pages import cells, login
    with TestClient(create_app()) as console:
        login(console, ADMIN)
        listed = console.get("/console/deliberations?step=feedback").text
        assert cells(listed, "deliberations")[0][:4] == [d.number, "路灯太亮", "物业管理", "反馈结果"]
        page = console.get(f"/console/deliberations/{d.id}").text
    assert [row[:2] for row in cells(page, "participants")] == [
        ["居委会", "小南庄社区 xiaonanzhuang"], ["居民代表", "王大爷"], ["物业公司", "小南庄物业公司 property_co"]]
    assert "13800001111" not in page  # a person's contact stays in the DB
    assert page.count('class="card session"') == 2 and "赞成 41" in page and "晚上10点后调暗" in page
    assert [row[4] for row in cells(page, "items")] == ["已办结", "已办结"]
    assert [row[0] for row in cells(page, "publicity")] == ["决议公开", "实施结果公开"]


def test_required_participant_types_come_from_the_policy(district, db):
    """A district edits who must take part; the edit applies to the next session."""
    from services import deliberations
    from services.cases import Conflict
    policy_dir = db
    d = write(deliberations.create, topic_type="dispute", title="快递站堵门", description=None,
              location={"community": "小南庄社区"}, case_ids=[], actor="xiaonanzhuang")
    write(deliberations.invite, deliberation_id=d.id, actor="admin",
          participants=[{"type": "residents_committee", "unit": "xiaonanzhuang"}])
    with pytest.raises(Conflict, match=r"调解员 \(mediator\)"):
        write(deliberations.record_session, deliberation_id=d.id, body=SESSION_1, actor="admin")
    path = policy_dir / "deliberation.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["required"]["dispute"] = ["residents_committee"]
    path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    write(deliberations.record_session, deliberation_id=d.id, body=SESSION_1, actor="admin")


def test_a_broken_deliberation_policy_names_file_and_field_and_keeps_the_last_good(district, db):
    from services import policies
    policy_dir = db
    assert policies.deliberation_policy().required_for("property")  # a good version was loaded
    path = policy_dir / "deliberation.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["required"]["property"].append("janitor")
    path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    assert "property_company" in policies.deliberation_policy().required_for("property")  # last good in force
    with policies.strict(), pytest.raises(policies.PolicyError) as refused:
        policies.deliberation_policy()
    assert "deliberation.yaml" in str(refused.value) and "required.property" in str(refused.value)
    assert "janitor" in str(refused.value)
    policy["required"]["property"].pop()
    policy["items"]["category"] = "no_such_category"
    path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    with policies.strict(), pytest.raises(policies.PolicyError, match="items.category"):
        policies.deliberation_policy()


def test_the_api_names_the_field_and_keeps_units_to_their_area(district):
    from api.main import create_app
    admin = {"Authorization": f"Bearer {ADMIN}"}
    community = {"Authorization": f"Bearer {district.unit_tokens['xiaonanzhuang']}"}
    other = {"Authorization": f"Bearer {district.unit_tokens['maofang']}"}
    department = {"Authorization": f"Bearer {district.unit_tokens['chengguan']}"}
    with TestClient(create_app()) as api:
        r = api.post("/api/deliberations", json={"topic_type": "tennis", "title": "网球场"}, headers=community)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "topic_type"
        r = api.post("/api/deliberations", json={"topic_type": "construction", "title": "网球场改造"}, headers=community)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "location"
        assert api.post("/api/deliberations", json={"topic_type": "construction", "title": "x",
                                                    "location": {"community": "小南庄社区"}},
                        headers=department).status_code == 403
        r = api.post("/api/deliberations", json={"topic_type": "construction", "title": "网球场改造",
                                                 "location": {"community": "小南庄社区"}}, headers=community)
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["step"] == "topic" and d["missing_types"] == ["residents_committee", "resident_rep", "planner"]
        base = f"/api/deliberations/{d['deliberation_id']}"
        assert api.get(base, headers=other).status_code == 404  # another community's deliberation
        assert api.post(f"{base}/participants", json={"participants": [{"type": "resident_rep", "name": "x"}]},
                        headers=other).status_code == 404
        r = api.post(f"{base}/participants", json={"participants": [{"type": "planner"}]}, headers=community)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "participants.0.name"
        r = api.post(f"{base}/participants", json={"participants": [{"type": "department", "name": "城管"}]},
                     headers=community)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "participants.0.unit"
        r = api.post(f"{base}/participants", headers=community, json={"participants": [
            {"type": "residents_committee", "unit": "xiaonanzhuang"}, {"type": "resident_rep", "name": "李阿姨"}]})
        assert r.status_code == 200, r.text
        session = {"kind": "meeting", "held_at": "2026-11-12T19:00:00+08:00"}
        r = api.post(f"{base}/sessions", json=session, headers=community)
        assert r.status_code == 409 and "责任规划师 (planner)" in r.json()["detail"]
        api.post(f"{base}/participants", json={"participants": [{"type": "planner", "name": "张规划师"}]},
                 headers=community)
        r = api.post(f"{base}/sessions", json=session | {"held_at": "2026-11-12T19:00:00"}, headers=community)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "held_at"
        r = api.post(f"{base}/sessions", headers=community, json=session | {"decision": {
            "method": "vote", "votes": {"for": 20, "against": 1}, "items": [{"unit": "nobody", "description": "x"}]}})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "decision.items.0.unit"
        r = api.post(f"{base}/sessions", headers=community, json=session | {"decision": {
            "method": "vote", "votes": {"for": 2, "against": 9}, "items": [{"unit": "haidian_st", "description": "x"}]}})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "decision.votes"
        r = api.post(f"{base}/sessions", headers=community, json=session | {"attendance": [999]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "attendance.0"
        r = api.post(f"{base}/sessions", headers=community, json=session | {"opinions": [{"by": "居民", "text": "好"}]})
        assert r.status_code == 201 and len(r.json()["sessions"]) == 1
        r = api.post(f"{base}/publicity", headers=community, json={"stage": "result", "content": "x", "place": "公告栏"})
        assert r.status_code == 409
        # a unit answers its own invitation only
        [committee] = [p for p in api.get(base, headers=admin).json()["participants"] if p["unit"] == "xiaonanzhuang"]
        rsvp = f"{base}/participants/{committee['participant_id']}/rsvp"
        assert api.post(rsvp, json={"answer": "accepted"}, headers=other).status_code == 404
        assert api.post(rsvp, json={"answer": "maybe"}, headers=community).status_code == 422
        assert api.post(rsvp, json={"answer": "accepted"}, headers=community).json()["rsvp"] == "accepted"
        # converting a case is a supervisor's
        assert api.post("/api/deliberations", json={"topic_type": "property", "case_ids": [1]},
                        headers=community).status_code == 403
        assert api.post("/api/deliberations", json={"topic_type": "property", "case_ids": [4242]},
                        headers=admin).status_code == 404
        listed = api.get("/api/deliberations", headers=community).json()
        assert [x["number"] for x in listed] == [d["number"]]
        assert api.get("/api/deliberations", headers=other).json() == []
