"""大家商量着办 against the real stack: a deliberation's flow run from a converted case to its feedback, with its
decision items carried out as cases by units over webhooks, one of them escalated by the deadline watch."""
from __future__ import annotations

import time
from collections import Counter
from urllib.parse import urlsplit

from tests.conftest import TEST_ESCALATION, Env, eventually


def test_a_deliberation_from_a_converted_case_to_feedback(env: Env):
    supervisor, community = env.staff("supervisor"), env.unit("xiaonanzhuang")
    created = env.submit(category="street_lights", title="路灯太亮, 一层住户睡不好")
    env.wait_orders(created["case_id"], 1)

    # 确定议题: a supervisor converts the case; its citizen is told on the case's timeline
    r = env.api.post("/api/deliberations", json={"topic_type": "property", "case_ids": [int(created["case_id"])]},
                     headers=supervisor)
    assert r.status_code == 201, r.text
    number, base = r.json()["number"], f"/api/deliberations/{r.json()['deliberation_id']}"

    def read() -> dict:
        answer = env.api.get(base, headers=env.admin)
        assert answer.status_code == 200, answer.text
        return answer.json()

    d = eventually(read, "the deliberation's flow run", lambda d: d["flow_run_id"])
    run_id = d["flow_run_id"]
    assert "deliberation.linked" in [t["kind"] for t in env.case(created["case_id"])["timeline"]]
    run = env.wait_paused(run_id)
    assert run["name"] == number and run["parameters"] == {"deliberation_id": int(d["deliberation_id"])}
    assert run["state_name"] == "Awaiting invitations"

    # 邀请代表: the community invites; a session without the property company is refused, naming it
    r = env.api.post(f"{base}/participants", headers=community, json={"participants": [
        {"type": "residents_committee", "unit": "xiaonanzhuang"}, {"type": "resident_rep", "name": "王大爷"}]})
    assert r.status_code == 200, r.text
    session = {"kind": "talk", "held_at": "2026-11-12T19:00:00+08:00", "residents_present": 50,
               "opinions": [{"by": f"{n}号楼居民", "text": f"意见 {n}"} for n in range(1, 23)],
               "options": ["调暗", "换低功率灯"]}
    r = env.api.post(f"{base}/sessions", json=session, headers=community)
    assert r.status_code == 409 and "property_company" in r.json()["detail"], r.text
    r = env.api.post(f"{base}/participants", headers=community,
                     json={"participants": [{"type": "property_company", "unit": "property_co"}]})
    [company] = [p for p in r.json()["participants"] if p["unit"] == "property_co"]
    [invited] = eventually(lambda: env.receiver.of(unit="property_co", type="deliberation.invited"),
                            "the invitation webhook")
    assert invited.data["deliberation_number"] == number
    assert invited.data["rsvp_url"].endswith(f"/participants/{company['participant_id']}/rsvp")
    r = env.api.post(urlsplit(invited.data["rsvp_url"]).path, json={"answer": "accepted"},
                     headers=env.unit("property_co"))
    assert r.status_code == 200 and r.json()["rsvp"] == "accepted", r.text

    # 组织商量: two rounds; the second decides by vote, with two items
    attendance = [int(p["participant_id"]) for p in read()["participants"]]
    assert env.api.post(f"{base}/sessions", json=session | {"attendance": attendance},
                        headers=community).status_code == 201
    eventually(read, "组织商量", lambda d: d["step"] == "deliberating")
    decision = {"method": "vote", "votes": {"for": 41, "against": 3, "abstain": 6}, "option": "换低功率灯",
                "items": [{"unit": "property_co", "description": "一层窗前路灯换成低功率灯"},
                          {"unit": "xiaonanzhuang", "description": "当晚入户回访一层住户", "urgency": "emergency"}]}
    r = env.api.post(f"{base}/sessions", headers=community,
                     json=session | {"kind": "meeting", "attendance": attendance, "decision": decision})
    assert r.status_code == 201, r.text

    # 办理事项: each item a case, directed to its unit; the second is left unanswered and escalates
    with env.policies(escalation=TEST_ESCALATION | {"levels": {"street": {"respond_within": "1h",
                                                                          "due_within": "2h"}}}):
        d = eventually(read, "the items' cases",
                       lambda d: len(d["items"]) == 2 and all(i["case_id"] for i in d["items"]))
        assert d["step"] == "carrying_out"
        env.wait_paused(run_id)
        first, second = d["items"]

        # replay-safe: resumed with a spurious input, the run re-runs from the top and doubles nothing
        def cases_of(d: dict) -> list[tuple]:
            return [(i["item_id"], i["case_id"], i["case_number"]) for i in d["items"]]
        before = read()
        for _ in range(2):
            assert env.resume(run_id, {"kind": "spurious"})["status"] == "ACCEPT"
            time.sleep(1)
            env.wait_paused(run_id)
        after = read()
        assert cases_of(after) == cases_of(before) and after["timeline"] == before["timeline"]
        assert len(env.receiver.of(type="deliberation.invited")) == 2

        order = env.wait_orders(first["case_id"], 1)["work_orders"][0]
        assert (order["unit"], order["reason"]) == ("property_co", "directed")
        [assigned] = eventually(lambda: env.receiver.of(unit="property_co", type="work_order.assigned",
                                                        case_number=first["case_number"]), "the item's work order")
        env.resolve(assigned.data["work_order_id"], "property_co")

        escalated = env.wait(second["case_id"], lambda c: any(o["unit"] == "haidian_st" for o in c["work_orders"]),
                             "the unanswered item escalated to the street")
        assert escalated["work_orders"][0]["respond_lapsed"] and escalated["escalations"][0]["trigger"] == \
            "overdue_response"
        street_order = [o for o in escalated["work_orders"] if o["unit"] == "haidian_st"][0]
        env.resolve(street_order["work_order_id"], "haidian_st")

        # 反馈结果: both item cases closed → the watch moves the deliberation on
        d = eventually(read, "反馈结果", lambda d: d["step"] == "feedback")
    assert [i["case_status"] for i in d["items"]] == ["closed", "closed"]
    assert d["items"][1]["lead_unit"] == "haidian_st"
    for stage, content in (("decision", "表决通过: 换低功率灯"), ("result", "路灯已更换, 一层住户已回访")):
        r = env.api.post(f"{base}/publicity", headers=community,
                         json={"stage": stage, "content": content, "place": "社区公告栏"})
        assert r.status_code == 201, r.text
    r = env.api.post(f"{base}/evaluations", headers=community,
                     json={"satisfaction": "satisfied", "resident": "3号楼居民", "comment": "晚上能睡好了"})
    assert r.status_code == 201, r.text
    env.wait_run(run_id, "COMPLETED")

    d = read()
    assert d["concluded_at"] and d["evaluations"]["by_satisfaction"]["satisfied"] == 1
    assert len(d["sessions"]) == 2 and len(d["sessions"][0]["opinions"]) == 22
    counts = Counter(t["kind"] for t in d["timeline"])
    assert counts["item.case"] == 2 and counts["concluded"] == 1 and counts["created"] == 1
    assert [t["data"]["to_step"] for t in d["timeline"] if t["kind"] == "step"] == [
        "inviting", "deliberating", "carrying_out", "feedback"]
    told = [t for t in env.case(created["case_id"])["timeline"] if t["kind"] == "deliberation.result"]
    assert len(told) == 1 and "路灯已更换" in told[0]["data"]["message"]
    [result] = eventually(lambda: env.receiver.of(unit="property_co", type="deliberation.result"),
                          "the result webhook (sent by the deliberation run, or the watch as the safety net)")
    assert "路灯已更换" in result.data["text"]
    run = env.flow_run(run_id)
    assert "王大爷" not in str(run) and "陈阿姨" not in str(run)
