"""Routing, 吹哨报到, deadlines and the escalation ladder as policy — on the real stack, with SLAs shortened by
editing the policy files (which apply to the next case without a restart)."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from tests.conftest import TEST_ESCALATION, TEST_SLA, Env, eventually


def kinds(detail: dict) -> list[str]:
    return [t["kind"] for t in detail["timeline"]]


def sla(**urgent) -> dict:
    return TEST_SLA | {"urgency": TEST_SLA["urgency"] | {"urgent": urgent}}


def test_reminders_go_out_at_the_policy_fractions(env: Env):
    with env.policies(sla=sla(respond_within="1h", due_within="12s") | {"reminders": [0.25, 0.5]}):
        created = env.submit(urgency="urgent", category="street_lights")
        detail = env.wait(created["case_id"], lambda d: kinds(d).count("work_order.reminder") >= 2, "two reminders")
    number = created["number"]
    reminders = eventually(lambda: len(r := env.receiver.of(type="work_order.reminder", case_number=number)) >= 2
                           and r, "reminder webhooks")
    assert sorted(r.data["elapsed"] for r in reminders) == [0.25, 0.5]
    assert len({r.webhook_id for r in reminders}) == 2
    order = detail["work_orders"][0]
    assert all(r.unit == order["unit"] and r.data["work_order_id"] == order["work_order_id"] for r in reminders)


def test_waiting_on_the_citizen_pauses_the_clock(env: Env):
    with env.policies(sla=sla(respond_within="1h", due_within="6s")):
        created = env.submit(urgency="urgent", category="street_lights")
        order = env.wait_orders(created["case_id"], 1)["work_orders"][0]
    wo, unit = order["work_order_id"], order["unit"]
    assert env.act(wo, unit, type="accept").status_code == 200
    bad = env.act(wo, unit, type="progress", pause_reason="lunch")
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "pause_reason"
    assert env.act(wo, unit, type="progress", pause_reason="citizen_unreachable", note="电话无人接听").status_code == 200
    time.sleep(10)  # past the original due_at, and more than two watch rounds
    detail = env.case(created["case_id"])
    assert detail["work_orders"][0]["due_lapsed"] is False and len(detail["work_orders"]) == 1
    assert env.act(wo, unit, type="progress", note="已联系上").status_code == 200
    detail = env.case(created["case_id"])
    resumed = [t for t in detail["timeline"] if t["kind"] == "sla.resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["paused_seconds"] >= 10
    moved = datetime.fromisoformat(detail["work_orders"][0]["due_at"]) - datetime.fromisoformat(order["due_at"])
    assert moved >= timedelta(seconds=10)
    assert "sla.paused" in kinds(detail)


def test_extension_approved_moves_due_at_and_refused_does_not(env: Env):
    created = env.submit(category="street_lights")
    order = env.wait_orders(created["case_id"], 1)["work_orders"][0]
    wo, unit = order["work_order_id"], order["unit"]
    env.act(wo, unit, type="accept")
    until = (datetime.fromisoformat(order["due_at"]) + timedelta(days=3)).isoformat()
    assert env.act(wo, unit, type="extend", reason="需协调产权单位", until=until).status_code == 200
    supervisor = env.staff("supervisor")
    [request] = [e for e in env.case(created["case_id"])["escalations"] if e["trigger"] == "extension_request"]

    no_reason = env.api.post(f"/api/escalations/{request['id']}/decision", json={"action": "extend"}, headers=supervisor)
    assert no_reason.status_code == 422 and no_reason.json()["detail"][0]["field"] == "reason"
    assert env.api.post(f"/api/escalations/{request['id']}/decision", json={"action": "extend", "reason": "同意"},
                        headers=env.unit(unit)).status_code == 401  # units do not decide
    r = env.api.post(f"/api/escalations/{request['id']}/decision", json={"action": "extend", "reason": "同意延期"},
                     headers=supervisor)
    assert r.status_code == 200, r.text
    detail = env.case(created["case_id"])
    assert datetime.fromisoformat(detail["work_orders"][0]["due_at"]) == datetime.fromisoformat(until)
    assert "extension.approved" in kinds(detail)
    again = env.api.post(f"/api/escalations/{request['id']}/decision", json={"action": "extend", "reason": "x"},
                         headers=supervisor)
    assert again.status_code == 409 and again.json()["current"] == "decided"

    later = (datetime.fromisoformat(until) + timedelta(days=5)).isoformat()
    env.act(wo, unit, type="extend", reason="还需更多时间", until=later)
    [second] = [e for e in env.case(created["case_id"])["escalations"]
                if e["trigger"] == "extension_request" and e["status"] == "open"]
    r = env.api.post(f"/api/escalations/{second['id']}/decision",
                     json={"action": "extend", "approve": False, "reason": "理由不充分"}, headers=supervisor)
    assert r.status_code == 200
    detail = env.case(created["case_id"])
    assert datetime.fromisoformat(detail["work_orders"][0]["due_at"]) == datetime.fromisoformat(until)
    assert "extension.refused" in kinds(detail)


def test_bounces_are_limited_then_a_dispatcher_routes_by_hand(env: Env):
    with env.policies(escalation=TEST_ESCALATION | {"max_bounces": 1}):
        created = env.submit(category="illegal_parking", location={"community": "安宁里社区"})
        case_id = created["case_id"]
        first = env.wait_orders(case_id, 1)["work_orders"][0]
        assert first["unit"] == "chengguan"
        env.act(first["work_order_id"], "chengguan", type="reject", reason="小区内部道路, 非城管职责")
        second = env.wait_orders(case_id, 2)["work_orders"][1]
        assert (second["unit"], second["reason"]) == ("qinghe_st", "reject")
        env.act(second["work_order_id"], "qinghe_st", type="reject", reason="应由社区处理")
        detail = env.wait(case_id, lambda d: d["escalations"], "bounce escalation")
    assert [e["trigger"] for e in detail["escalations"]] == ["bounced"]
    assert "bounced_too_often" in kinds(detail) and len(detail["work_orders"]) == 2

    dispatcher = env.staff("supervisor")
    queue = env.api.get("/api/dispatch-queue", headers=dispatcher).json()
    assert case_id in [c["case_id"] for c in queue]
    bad = env.api.post(f"/api/cases/{case_id}/dispatch", json={"unit": "nowhere", "reason": "x"}, headers=dispatcher)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "unit"
    r = env.api.post(f"/api/cases/{case_id}/dispatch", json={"unit": "anningli", "reason": "小区内部, 社区牵头"},
                     headers=dispatcher)
    assert r.status_code == 200
    third = env.wait_orders(case_id, 3)["work_orders"][2]
    assert (third["unit"], third["reason"]) == ("anningli", "reassign")
    assert case_id not in [c["case_id"] for c in env.api.get("/api/dispatch-queue", headers=dispatcher).json()]
    stats = env.api.get("/api/units/chengguan/stats", headers=env.admin).json()
    assert stats["bounces"] >= 1


def test_reject_by_next_rule_and_by_dispatcher(env: Env):
    rule = {"name": "水质 → 水务局 (备选)", "categories": ["water_quality"], "unit": "water_bureau"}
    with env.policies(routing=env.routing_with(rule, on_reject="next_rule")):
        created = env.submit(category="water_quality")
        first = env.wait_orders(created["case_id"], 1)["work_orders"][0]
        assert first["unit"] == "water_bureau"
        env.act(first["work_order_id"], "water_bureau", type="reject", reason="属供水企业")
        second = env.wait_orders(created["case_id"], 2)["work_orders"][1]
    assert second["unit"] == "water_co"  # the next matching rule, skipping the unit that returned it

    with env.policies(routing=env.routing_with(on_reject="dispatcher")):
        created = env.submit(category="illegal_parking")
        first = env.wait_orders(created["case_id"], 1)["work_orders"][0]
        env.act(first["work_order_id"], first["unit"], type="reject", reason="非本单位")
        detail = env.wait(created["case_id"], lambda d: "awaiting_dispatch" in kinds(d), "dispatcher queue")
    assert len(detail["work_orders"]) == 1
    queue = env.api.get("/api/dispatch-queue", headers=env.staff("supervisor")).json()
    assert created["case_id"] in [c["case_id"] for c in queue]


def test_an_accepted_order_cannot_be_returned(env: Env):
    """首接负责: the first unit that accepts owns the case."""
    created = env.submit(category="street_lights")
    order = env.wait_orders(created["case_id"], 1)["work_orders"][0]
    env.act(order["work_order_id"], order["unit"], type="accept")
    r = env.act(order["work_order_id"], order["unit"], type="reject", reason="不想办")
    assert r.status_code == 409 and r.json()["current"] == "accepted"
    detail = env.wait(created["case_id"], lambda d: d["status"] == "handling", "handling")
    assert [t["data"].get("owner") for t in detail["timeline"] if t["kind"] == "handling"] == [order["unit"]]


def test_co_handling_units_get_masked_orders(env: Env):
    rule = {"name": "施工扰民 → 城管牵头, 街道协办", "categories": ["construction_noise"], "unit": "chengguan",
            "co_units": ["{street}"]}
    with env.policies(routing=env.routing_with(rule)):
        created = env.submit(category="construction_noise")
        detail = env.wait_orders(created["case_id"], 2)
    lead, co = detail["work_orders"]
    assert (lead["unit"], lead["role"], co["unit"], co["role"]) == ("chengguan", "lead", "haidian_st", "co")
    number = created["number"]
    [co_hook] = eventually(lambda: env.receiver.of(unit="haidian_st", type="work_order.assigned", case_number=number),
                           "co order webhook")
    [lead_hook] = eventually(lambda: env.receiver.of(unit="chengguan", type="work_order.assigned", case_number=number),
                             "lead order webhook")
    assert co_hook.data["role"] == "co" and co_hook.data["citizen"]["phone"] == "139****5678"
    assert lead_hook.data["citizen"]["phone"] == "13912345678"
    assert env.act(co["work_order_id"], "haidian_st", type="accept").status_code == 200
    assert env.act(co["work_order_id"], "haidian_st", type="progress", note="已到现场协调施工方").status_code == 200
    # each report is its own delivery: wait for the progress report, not only the first (the accept)
    reports = eventually(lambda: env.receiver.of(unit="chengguan", type="work_order.co_report", case_number=number),
                         "co-unit reports reach the lead unit",
                         until=lambda rs: ("haidian_st", "progress") in {(r.data["co_unit"], r.data["type"]) for r in rs})
    assert {(r.data["co_unit"], r.data["type"]) for r in reports} >= {("haidian_st", "progress")}
    env.resolve(lead["work_order_id"], "chengguan")
    env.wait(created["case_id"], lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    env.follow_up(created["case_id"], reached=True, resolved=True, satisfaction="satisfied")
    detail = env.wait(created["case_id"], lambda d: d["status"] == "closed", "close")
    assert detail["work_orders"][1]["status"] == "withdrawn"  # the co order closes with the case


def test_whistle_report_lapse_escalates_and_ratings_follow(env: Env):
    with env.policies(whistle={"report_within": {"emergency": "4s", "tough": "1h", "daily": "1d"}}):
        created = env.submit(category="sewer_blockage", location={"community": "安宁里社区"},
                             description="楼道污水倒灌, 住户不在家")
        case_id = created["case_id"]
        env.wait_orders(case_id, 1)
        body = {"units": ["judicial_office", "police_station"], "kind": "emergency", "note": "污水倒灌, 需协调赔偿"}
        assert env.api.post(f"/api/cases/{case_id}/whistle", json=body,
                            headers=env.unit("chengguan")).status_code == 422  # a department cannot whistle
        assert env.api.post(f"/api/cases/{case_id}/whistle", json=body,
                            headers=env.unit("xiaonanzhuang")).status_code == 404  # not its jurisdiction
        r = env.api.post(f"/api/cases/{case_id}/whistle", json=body, headers=env.unit("anningli"))
        assert r.status_code == 201, r.text
    whistle = r.json()
    wid = whistle["id"]
    early = env.api.post(f"/api/whistles/{wid}/ratings", json={"ratings": [{"unit": "judicial_office", "score": 5}]},
                         headers=env.unit("anningli"))
    assert early.status_code == 409
    rep = env.api.post(f"/api/whistles/{wid}/report", json={"note": "已到场"}, headers=env.unit("judicial_office"))
    assert rep.status_code == 200 and rep.json()["on_time"] is True
    assert env.api.post(f"/api/whistles/{wid}/report", json={},
                        headers=env.unit("judicial_office")).json()["duplicate"] is True
    assert env.api.post(f"/api/whistles/{wid}/report", json={},
                        headers=env.unit("water_co")).status_code == 404  # not summoned
    summoned = eventually(lambda: env.receiver.of(type="whistle.summoned", case_number=created["number"]), "summons")
    assert {s.unit for s in summoned} <= {"judicial_office", "police_station"}

    detail = env.wait(case_id, lambda d: any(e["trigger"] == "whistle_not_reported" for e in d["escalations"]),
                      "whistle report lapse")
    [missed] = [e for e in detail["escalations"] if e["trigger"] == "whistle_not_reported"]
    assert (missed["from_unit"], missed["to_unit"]) == ("police_station", "haidian")
    assert eventually(lambda: env.receiver.of(unit="haidian", type="escalation.opened", case_number=created["number"]),
                      "the district is notified")

    bad = env.api.post(f"/api/whistles/{wid}/ratings", json={"ratings": [{"unit": "judicial_office", "score": 9}]},
                       headers=env.unit("anningli"))
    assert bad.status_code == 422
    r = env.api.post(f"/api/whistles/{wid}/ratings", headers=env.unit("anningli"), json={"ratings": [
        {"unit": "judicial_office", "score": 5, "note": "及时到场"}, {"unit": "police_station", "score": 1}]})
    assert r.status_code == 200 and r.json() == {"rated": 2}
    shown = env.api.get(f"/api/whistles/{wid}", headers=env.admin).json()
    assert {u["unit"]: (u["score"], u["lapsed"]) for u in shown["units"]} == {
        "judicial_office": (5, False), "police_station": (1, True)}
    stats = env.api.get("/api/units/police_station/stats", headers=env.admin).json()["whistles"]
    assert stats["not_reported"] >= 1


def test_completion_lapse_escalates_and_supervisors_decide(env: Env):
    with env.policies(sla=sla(respond_within="1h", due_within="4s")):
        created = env.submit(urgency="urgent", category="sanitation", location={"community": "万泉庄社区"})
        case_id = created["case_id"]
        first = env.wait_orders(case_id, 1)["work_orders"][0]
        assert first["unit"] == "wanquanzhuang"
        env.act(first["work_order_id"], "wanquanzhuang", type="accept")
        env.act(first["work_order_id"], "wanquanzhuang", type="contacted")
        detail = env.wait_orders(case_id, 2)
    [lapse] = detail["escalations"]
    assert (lapse["trigger"], lapse["from_unit"], lapse["to_unit"]) == (
        "overdue_completion", "wanquanzhuang", "haidian_st")
    second = detail["work_orders"][1]
    supervisor = env.staff("supervisor")

    r = env.api.post(f"/api/escalations/{lapse['id']}/decision", headers=supervisor,
                     json={"action": "reassign", "unit": "qinghe_st", "reason": "跨街道, 由清河街道牵头"})
    assert r.status_code == 200, r.text
    detail = env.wait_orders(case_id, 3)
    assert detail["work_orders"][1]["status"] == "withdrawn"
    assert (detail["work_orders"][2]["unit"], detail["work_orders"][2]["reason"]) == ("qinghe_st", "reassign")
    assert eventually(lambda: env.receiver.of(unit=second["unit"], type="work_order.withdrawn",
                                              case_number=created["number"]), "withdrawal webhook")

    third = detail["work_orders"][2]
    env.act(third["work_order_id"], "qinghe_st", type="accept")
    env.act(third["work_order_id"], "qinghe_st", type="extend", reason="需区级协调",
            until=(datetime.fromisoformat(third["due_at"]) + timedelta(days=2)).isoformat())
    [request] = [e for e in env.case(case_id)["escalations"] if e["status"] == "open"]
    r = env.api.post(f"/api/escalations/{request['id']}/decision", headers=supervisor,
                     json={"action": "take_over", "leader": "区委副书记", "reason": "疑难案件, 领导包案"})
    assert r.status_code == 200
    detail = env.wait(case_id, lambda d: "taken_over" in kinds(d), "包案")

    env.act(third["work_order_id"], "qinghe_st", type="extend", reason="仍需时间",
            until=(datetime.fromisoformat(third["due_at"]) + timedelta(days=3)).isoformat())
    [request] = [e for e in env.case(case_id)["escalations"] if e["status"] == "open"]
    r = env.api.post(f"/api/escalations/{request['id']}/decision", headers=supervisor,
                     json={"action": "close", "reason": "已由区领导协调解决"})
    assert r.status_code == 200
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "closed by the supervisor")
    assert detail["evaluation"]["follow_up"] == "closed_by_supervisor"
    assert detail["work_orders"][2]["status"] == "withdrawn"
    decided = env.api.get("/api/escalations?status=decided", headers=supervisor).json()
    assert {e["decision"]["action"] for e in decided if e["case_number"] == created["number"]} == {
        "reassign", "take_over", "close"}


def test_policy_check_reports_problems(env: Env):
    ok = env.api.get("/api/policies/check", headers=env.admin).json()
    assert ok["ok"] is True, ok
    broken = env.routing_with({"name": "ghost", "categories": ["noise"], "unit": "no_such_unit"},
                              {"name": "noise in qinghe", "categories": ["noise"], "streets": ["qinghe_st"],
                               "unit": "qinghe_st"})
    with env.policies(routing=broken):
        bad = env.api.get("/api/policies/check", headers=env.admin).json()
    assert bad["ok"] is False and any("no_such_unit" in p for p in bad["problems"])
    assert any("overlaps" in w for w in bad["warnings"])
