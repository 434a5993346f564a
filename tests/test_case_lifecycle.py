"""Whole case paths against the real stack: Prefect server + serve + API + DB + webhooks over HTTP."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.conftest import STACK_TIMEOUT, TEST_SLA, Env, eventually

CITIZEN_NAME, CITIZEN_PHONE = "陈阿姨", "13912345678"


def kinds(detail: dict) -> list[str]:
    return [t["kind"] for t in detail["timeline"]]


def test_happy_path_to_closed(env: Env):
    created = env.submit(category="street_lights", title="路灯太亮")
    case_id, number = created["case_id"], created["number"]
    assert created["flow_run_id"]

    detail = env.wait_orders(case_id, 1)
    order = detail["work_orders"][0]
    assert detail["jurisdiction"] == {"district": "haidian", "street": "haidian_st", "community": "xiaonanzhuang"}
    assert order["unit"] == "haidian_st" and order["reason"] == "direct"  # no rule for 路灯: 直派 to the street

    env.wait(case_id, lambda d: d["deliveries"] and d["deliveries"][0]["status"] == "delivered", "delivery")
    [assigned] = env.receiver.of(unit="haidian_st", type="work_order.assigned", case_number=number)
    assert assigned.data["work_order_id"] == order["work_order_id"]
    assert assigned.data["citizen"]["phone"] == CITIZEN_PHONE  # the lead unit must contact the citizen
    assert assigned.data["callback_url"].endswith(f"/api/work-orders/{order['work_order_id']}/events")
    assert "请于" in assigned.data["text"]

    env.resolve(order["work_order_id"], "haidian_st")
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up stage")
    queue = env.api.get("/api/follow-ups?status=open", headers=env.staff("follow_up")).json()
    [mine] = [q for q in queue if q["case_id"] == case_id]
    assert mine["citizen"]["phone"] == CITIZEN_PHONE and f"诉求人: {CITIZEN_NAME} {CITIZEN_PHONE}" in mine["script"]
    assert env.api.get("/api/follow-ups", headers=env.unit("haidian_st")).status_code == 401  # staff only
    assert env.follow_up(case_id, reached=True, resolved=True, satisfaction="satisfied").status_code == 200
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "close")

    assert detail["evaluation"] | {"closed_at": None} == {
        "responded_in_time": True, "completed_in_time": True, "resolved": True, "satisfaction": "satisfied",
        "follow_up": "answered", "closed_at": None}
    steps = kinds(detail)
    expected = ["received", "collected", "routed", "work_order.assigned", "unit.accept", "unit.contacted",
                "unit.complete", "follow_up.requested", "follow_up.answered", "closed"]
    assert [k for k in steps if k in expected] == expected
    assert "handling" in steps

    run = env.flow_run(created["flow_run_id"])
    assert run["name"] == number
    assert run["parameters"] == {"case_id": int(case_id)}
    # urgency as the case has it: a hot spot (热点) raises it, and earlier tests of the session may have made one here
    assert {"district:haidian", "street:haidian_st", "category:street_lights",
            f"urgency:{detail['urgency']}"} <= set(run["tags"]), run["tags"]
    env.wait_run(created["flow_run_id"], "COMPLETED")


def test_no_citizen_details_in_prefect(env: Env):
    created = env.submit(citizen={"name": "王小明", "phone": "13700001111"})
    detail = env.wait_orders(created["case_id"], 1)
    env.wait_paused(created["flow_run_id"])
    run = env.flow_run(created["flow_run_id"])
    logs = eventually(lambda: env.prefect.post("/api/logs/filter", json={  # logs are shipped in batches
        "logs": {"flow_run_id": {"any_": [created["flow_run_id"]]}}}).json(), "the case run's logs of its steps")
    visible = str(run) + " ".join(entry["message"] for entry in logs)
    for secret in ("王小明", "13700001111"):
        assert secret not in visible
    # …while the case detail for staff shows them masked
    assert detail["citizen"] == {"name": "王**", "phone": "137****1111", "anonymous": False}


def _run_when(env: Env, run_id: str, state_name: str, timeout: float = STACK_TIMEOUT) -> dict:
    """The run in state `state_name` with its stage tag (published right after the state is accepted)."""
    stage_tag = "stage:" + state_name.lower().replace(" ", "-")
    return eventually(lambda: env.flow_run(run_id), f"the run {state_name!r}",
                      lambda run: run["state_name"] == state_name and (
                          run["state_type"] != "PAUSED" or stage_tag in run["tags"]), timeout,
                      describe=lambda run: f"{run['state_type']} {run['state_name']!r} {run['tags']}")


def _artifact(env: Env, run_id: str) -> str:
    r = env.prefect_post("/api/artifacts/filter", {
        "artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC", "limit": 1})
    assert r.status_code == 200 and r.json(), r.text
    return r.json()[0]["data"]


def test_operators_see_the_stage_tags_and_timeline_in_prefect(env: Env):
    """The waiting run's state name says the stage; tags filter by place, unit, level, stage; the timeline
    artifact follows the case and shows no citizen name or phone, even when a unit's note contains them."""
    created = env.submit(category="street_lights", citizen={"name": "赵大妈", "phone": "13811112222"})
    case_id, run_id, number = created["case_id"], created["flow_run_id"], created["number"]
    order = env.wait_orders(case_id, 1)["work_orders"][0]
    run = _run_when(env, run_id, "Awaiting unit")
    assert run["state_type"] == "PAUSED" and run["name"] == number
    assert {"unit:haidian_st", "level:street", "stage:awaiting-unit", "category:street_lights",  # 直派
            "community:xiaonanzhuang"} <= set(run["tags"]), run["tags"]
    assert number in _artifact(env, run_id)

    for event in ({"type": "accept"}, {"type": "contacted", "note": "已电话联系赵大妈 13811112222, 约明天上门"},
                  {"type": "complete", "resolved": True}):
        assert env.act(order["work_order_id"], order["unit"], **event).status_code == 200
    run = _run_when(env, run_id, "Awaiting follow-up")
    assert "stage:awaiting-follow-up" in run["tags"]
    markdown = _artifact(env, run_id)
    assert "unit.contacted" in markdown and "138" in markdown
    for secret in ("赵大妈", "13811112222"):
        assert secret not in markdown

    env.follow_up(case_id, reached=True, resolved=True, satisfaction="satisfied")
    _run_when(env, run_id, "Completed")
    assert "closed" in _artifact(env, run_id)


def test_lapsed_deadlines_escalate_up_the_ladder(env: Env):
    """社区 → 街道 → 区: each lapse marks the order, sends the next level a new order, opens an escalation."""
    created = env.submit(urgency="emergency", category="sanitation", location={"community": "万泉庄社区"})
    case_id, number = created["case_id"], created["number"]
    detail = env.wait_orders(case_id, 3, timeout=STACK_TIMEOUT)
    units = [o["unit"] for o in detail["work_orders"]]
    assert units == ["wanquanzhuang", "haidian_st", "haidian"]
    first, second, third = detail["work_orders"]
    assert first["status"] == "lapsed" and first["respond_lapsed"]
    assert second["status"] == "lapsed" and second["reason"] == "escalation"
    assert third["status"] == "assigned"

    detail = env.wait(case_id, lambda d: len(d["escalations"]) >= 3, "escalation at the top of the ladder")
    triggers = [(e["trigger"], e["from_unit"], e["to_unit"]) for e in detail["escalations"]]
    assert triggers == [("overdue_response", "wanquanzhuang", "haidian_st"),
                        ("overdue_response", "haidian_st", "haidian"),
                        ("overdue_response", "haidian", None)]  # nowhere higher: supervisors take it
    assert detail["work_orders"][2]["status"] == "assigned" and len(detail["work_orders"]) == 3
    assert "stage:escalated" in _run_when(env, created["flow_run_id"], "Escalated")["tags"]  # what operators filter on

    listed = env.api.get("/api/escalations?status=open", headers=env.staff("supervisor")).json()
    assert {(e["trigger"], e["from_unit"]) for e in listed if e["case_number"] == number} == {
        ("overdue_response", "wanquanzhuang"), ("overdue_response", "haidian_st"), ("overdue_response", "haidian")}
    eventually(lambda: env.receiver.of(unit="haidian_st", type="work_order.escalated", case_number=number),
               "the lapsed unit to be told its order was escalated")
    assert env.receiver.of(unit="wanquanzhuang", type="work_order.escalated", case_number=number)
    assert env.receiver.of(unit="haidian", type="work_order.assigned", case_number=number)

    # the district handles it after all: the case still closes, and the record says it was late
    env.resolve(third["work_order_id"], "haidian")
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up stage")
    env.follow_up(case_id, reached=True, resolved=True, satisfaction="basically_satisfied")
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "close")
    assert detail["evaluation"]["responded_in_time"] is False
    assert detail["evaluation"]["completed_in_time"] is False


def test_reject_redispatches_to_the_street(env: Env):
    created = env.submit(category="illegal_parking", location={"community": "安宁里社区"})
    case_id = created["case_id"]
    first = env.wait_orders(case_id, 1)["work_orders"][0]
    assert first["unit"] == "chengguan" and first["reason"] == "dispatch"  # the responsibility list's rule

    r = env.act(first["work_order_id"], "chengguan", type="reject", reason="不属于城管职责, 属小区内部管理")
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    detail = env.wait_orders(case_id, 2)
    second = detail["work_orders"][1]
    assert (second["unit"], second["reason"], detail["work_orders"][0]["status"]) == ("qinghe_st", "reject", "rejected")
    assert "redispatched" in kinds(detail) and detail["lead_unit"] == "qinghe_st"
    # the rejected order is closed to its unit
    assert env.act(first["work_order_id"], "chengguan", type="accept").status_code == 409


def test_unsatisfied_follow_up_reopens_once_then_escalates(env: Env):
    created = env.submit(category="water_quality", location={"community": "安宁里社区"})
    case_id = created["case_id"]
    first = env.wait_orders(case_id, 1)["work_orders"][0]
    assert first["unit"] == "water_co"
    env.resolve(first["work_order_id"], "water_co")
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    env.follow_up(case_id, reached=True, resolved=False, satisfaction="unsatisfied", note="水还是黄的")

    detail = env.wait_orders(case_id, 2)
    second = detail["work_orders"][1]
    assert (second["unit"], second["reason"]) == ("water_co", "reopen")  # 重办: same lead unit
    assert detail["reopen_count"] == 1 and "reopened" in kinds(detail)

    env.resolve(second["work_order_id"], "water_co")
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "second follow-up")
    env.follow_up(case_id, reached=True, resolved=True, satisfaction="unsatisfied")
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "close")
    assert [e["trigger"] for e in detail["escalations"]] == ["unsatisfied_twice"]
    assert detail["evaluation"]["satisfaction"] == "unsatisfied" and len(detail["work_orders"]) == 2


def test_follow_up_window_lapse_is_recorded_as_not_reached(env: Env):
    env.write_sla(TEST_SLA | {"follow_up": {"window": "2s"}})  # policy files are read per case: no restart
    try:
        created = env.submit(category="street_lights")
        case_id = created["case_id"]
        order = env.wait_orders(case_id, 1)["work_orders"][0]
        env.resolve(order["work_order_id"], order["unit"])
        detail = env.wait(case_id, lambda d: d["status"] == "closed", "close after the window lapsed")
    finally:
        env.write_sla(TEST_SLA)
    assert detail["evaluation"]["follow_up"] == "not_reached"
    assert "follow_up.not_reached" in kinds(detail)
    assert detail["evaluation"]["resolved"] is True  # the unit's own report stands when the citizen is not reached


def test_follow_up_attempts_until_not_reached(env: Env):
    """Policy: 3 calls. Two missed calls keep the case waiting (counted, on the timeline); the third closes it."""
    created = env.submit(category="street_lights")
    case_id = created["case_id"]
    order = env.wait_orders(case_id, 1)["work_orders"][0]
    env.resolve(order["work_order_id"], order["unit"])
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    for attempt in (1, 2):
        r = env.follow_up(case_id, reached=False, note=f"第{attempt}次无人接听")
        assert r.status_code == 200 and r.json()["attempts"] == attempt and r.json()["max_attempts"] == 3, r.text
    queue = env.api.get("/api/follow-ups?status=open", headers=env.staff("follow_up")).json()
    assert [q["attempts"] for q in queue if q["case_id"] == case_id] == [2]
    time.sleep(2 * env.stack.watch_interval_seconds)  # a missed call must not close it, even after a watch pass
    assert env.case(case_id)["status"] == "awaiting_follow_up"
    assert env.follow_up(case_id, reached=False).json()["attempts"] == 3
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "close after the last attempt")
    assert detail["evaluation"]["follow_up"] == "not_reached"
    assert [t["data"]["attempt"] for t in detail["timeline"] if t["kind"] == "follow_up.attempt"] == [1, 2, 3]
    assert detail["evaluation"]["satisfaction"] is None


def test_intake_is_idempotent_by_source_ref(env: Env):
    body = {"source": "web", "source_ref": f"web-{time.time_ns()}", "description": "小区电动车充电桩不足",
            "category": "ebike_charging", "location": {"community": "xiaonanzhuang"}}
    first = env.api.post("/api/cases", json=body)
    again = env.api.post("/api/cases", json=body | {"description": "另一段文字"})
    other_source = env.api.post("/api/cases", json=body | {"source": "app"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["case_id"] == first.json()["case_id"] and again.json()["number"] == first.json()["number"]
    assert other_source.status_code == 201 and other_source.json()["case_id"] != first.json()["case_id"]
    runs = env.prefect.post("/api/flow_runs/filter",
                            json={"flow_runs": {"name": {"any_": [first.json()["number"]]}}}).json()
    assert len(runs) == 1
    assert env.case(first.json()["case_id"])["description"] == "小区电动车充电桩不足"


@pytest.mark.parametrize("change, field", [
    ({"description": None}, "description"),
    ({"description": "   "}, "description"),
    ({"source": "fax"}, "source"),
    ({"source_ref": ""}, "source_ref"),
    ({"urgency": "asap"}, "urgency"),
    ({"citizen": {"phone": "call me"}}, "citizen.phone"),
    ({"location": {"lat": 120}}, "location.lat"),
    ({"reported_at": "2026-11-23T09:00:00"}, "reported_at"),
    ({"reported_at": "yesterday"}, "reported_at"),
    ({"colour": "red"}, "colour"),
])
def test_bad_intake_gets_422_naming_the_field(env: Env, change: dict, field: str):
    body = {"source": "hotline", "source_ref": f"bad-{time.time_ns()}", "description": "路灯不亮"}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    r = env.api.post("/api/cases", json=body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["detail"]], r.json()


def test_malformed_json_is_a_422(env: Env):
    r = env.api.post("/api/cases", content=b'{"source": "hotline",', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_unit_events_follow_the_state_machine(env: Env):
    created = env.submit(category="street_lights")
    order = env.wait_orders(created["case_id"], 1)["work_orders"][0]
    wo, unit = order["work_order_id"], order["unit"]

    early = env.act(wo, unit, type="complete", resolved=True)
    assert early.status_code == 409 and early.json()["current"] == "assigned"
    assert env.act(wo, unit, type="accept").json() == {"work_order_id": wo, "status": "accepted", "duplicate": False}
    assert env.act(wo, unit, type="accept").json()["duplicate"] is True  # repeated: acknowledged, no second effect
    assert env.act(wo, "qinghe_st", type="contacted").status_code == 404  # not theirs
    assert env.api.post(f"/api/work-orders/{wo}/events", json={"type": "accept"}).status_code == 401
    assert env.act("999999", unit, type="accept").status_code == 404
    bad = env.act(wo, unit, type="reject")
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "reason"
    missing = env.act(wo, unit, type="complete")  # resolved is required
    assert missing.status_code == 422 and missing.json()["detail"][0]["field"] == "resolved"
    assert env.act(wo, unit, type="teleport").status_code == 422

    listed = env.api.get("/api/work-orders?status=open", headers=env.unit(unit)).json()
    assert wo in [o["work_order_id"] for o in listed]
    detail = env.case(created["case_id"])
    assert Counter(kinds(detail))["unit.accept"] == 1


def test_replays_duplicate_nothing(env: Env):
    """Resume the waiting run again and again: each resume re-runs the flow from the top, and nothing doubles."""
    # a citizen of their own: no 重复诉求 links (one timeline entry per earlier case) to blur the count below
    created = env.submit(category="street_lights", citizen={"name": "孙阿姨", "phone": f"135{time.time_ns() % 10**8:08d}"})
    case_id, run_id, number = created["case_id"], created["flow_run_id"], created["number"]
    env.wait_orders(case_id, 1)
    env.wait_paused(run_id)
    before = env.case(case_id)
    for i in range(3):
        assert env.resume(run_id, {"kind": "spurious"})["status"] == "ACCEPT"
        time.sleep(1)
        env.wait_paused(run_id)
    after = env.case(case_id)
    assert after["work_orders"] == before["work_orders"]
    assert after["timeline"] == before["timeline"]
    assert after["deliveries"] == before["deliveries"]
    assert len(env.receiver.of(type="work_order.assigned", case_number=number)) == 1
    webhook_id = after["deliveries"][0]["webhook_id"]
    assert [a for a in env.receiver.attempts if a[1] == webhook_id] == [(after["work_orders"][0]["unit"], webhook_id, 204)]

    # and the case still runs to its end afterwards, with every step recorded once
    order = after["work_orders"][0]
    env.resolve(order["work_order_id"], order["unit"])
    env.wait(case_id, lambda d: d["status"] == "awaiting_follow_up", "follow-up")
    env.follow_up(case_id, reached=True, resolved=True, satisfaction="satisfied")
    detail = env.wait(case_id, lambda d: d["status"] == "closed", "close")
    counts = Counter(kinds(detail))
    assert all(n == 1 for n in counts.values()), counts
    assert len(detail["work_orders"]) == 1 and len(detail["deliveries"]) == 1


def test_failed_delivery_is_recorded_and_retried(env: Env):
    env.receiver.fail_next["judicial_office"] = [500, 503]
    env.write_sla(TEST_SLA)
    routing = env.policy_dir / "routing.yaml"
    original = routing.read_text(encoding="utf-8")
    routing.write_text(original.replace("rules:\n", "rules:\n  - {name: 劳动纠纷 → 司法所, categories: [labour_dispute], "
                                                    "unit: judicial_office}\n", 1), encoding="utf-8")
    try:
        created = env.submit(category="labour_dispute")
        detail = env.wait_orders(created["case_id"], 1)
    finally:
        routing.write_text(original, encoding="utf-8")
    assert detail["work_orders"][0]["unit"] == "judicial_office"  # an edited responsibility list applies at once
    detail = env.wait(created["case_id"], lambda d: d["deliveries"][0]["status"] == "delivered",
                      "delivery after retries", timeout=STACK_TIMEOUT)
    delivery = detail["deliveries"][0]
    assert delivery["attempts"] == 3
    answered = [status for unit, wid, status in env.receiver.attempts if wid == delivery["webhook_id"]]
    assert answered == [500, 503, 204]  # same webhook-id on every attempt
