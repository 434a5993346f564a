"""The console's deliberation forms (大家商量着办), fast: through the ASGI app in-process on a temporary SQLite DB
with the demo district (Prefect unreachable: what the flow does is applied with `flow_settle` / `carry_out`).
Each form records through the same service as the API, names the field and the reason in Chinese for bad input
(recording nothing), follows the posting-user guard (login, CSRF, organisers only), and redirects back."""
from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN
from tests.test_console_pages import cells, login
from tests.test_deliberations import carry_out, detail, district, flow_settle, handle_item_case  # noqa: F401
from tests.test_routing_ladder import timeline


@pytest.fixture
def console(district):
    from api.main import create_app
    with TestClient(create_app()) as client:
        yield client


def post(client: TestClient, path: str, **data):
    return client.post(path, data=data, follow_redirects=False)


def ok(r, to: str) -> None:
    assert r.status_code == 303, r.text[-3000:]
    assert r.headers["location"] == to


def refused(r, status: int, *texts: str) -> None:
    assert r.status_code == status, r.text[-3000:]
    for text in texts:
        assert text in r.text, (text, r.text[-3000:])
    assert "未做任何更改" in r.text or status in (403, 404)


def test_a_deliberation_is_run_from_the_console_step_by_step(console, district):
    csrf = login(console, district.staff_tokens["supervisor"])
    page = console.get("/console/deliberations").text
    assert 'id="new-topic"' in page and '<option value="property">物业管理</option>' in page
    assert "<title>大家商量着办 · 12345 接诉即办</title>" in page and page.count('id="new-topic"') == 1

    # 确定议题: the field and the reason in Chinese for bad input; nothing recorded
    new = "/console/deliberations"
    refused(post(console, new, csrf=csrf, topic_type="property", title="", community="xiaonanzhuang"), 422,
            "议题未创建", "「议题名称」必须填写")
    refused(post(console, new, csrf=csrf, topic_type="tennis", title="网球场", community="xiaonanzhuang"), 422,
            "「议题类型」请从列表中选择")
    refused(post(console, new, csrf=csrf, topic_type="property", title="路灯太亮"), 422,
            "「社区/地点」请选择社区或填写地点")
    assert console.get("/api/deliberations", headers={"Authorization": f"Bearer {ADMIN}"}).json() == []
    r = post(console, new, csrf=csrf, topic_type="property", title="路灯太亮", community="xiaonanzhuang",
             address="3号楼前", description="一层住户反映路灯太亮")
    [d] = console.get("/api/deliberations", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    did = int(d["deliberation_id"])
    base = f"/console/deliberations/{did}"
    ok(r, f"{base}?done=created")
    assert "已确定议题, 已记入时间线" in console.get(r.headers["location"]).text

    # the guard of the case forms: CSRF, login; organising is a supervisor's (a dispatcher only looks)
    refused(post(console, f"{base}/participants", type="resident_rep", name="王大爷"), 403, "CSRF")
    dispatcher = TestClient(console.app)
    from tests.test_console_pages import add_staff
    other_csrf = login(dispatcher, add_staff("dispatcher", "赵派单"))
    refused(post(dispatcher, f"{base}/participants", csrf=other_csrf, type="resident_rep", name="王大爷"), 403,
            "只有督办人员或管理员")
    assert 'id="invite"' not in dispatcher.get(base).text
    ok(post(TestClient(console.app), f"{base}/participants", csrf=csrf, type="resident_rep"), "/console/login")
    assert detail(did)["participants"] == []

    # 邀请代表 by type: a unit, a person; the reason when the form does not fit the type
    refused(post(console, f"{base}/participants", csrf=csrf, type="resident_rep", name=""), 422,
            "邀请未完成", "「姓名」邀请个人须填写姓名")
    refused(post(console, f"{base}/participants", csrf=csrf, type="property_company", unit=""), 422,
            "「单位」须选择已登记的单位")
    ok(post(console, f"{base}/participants", csrf=csrf, type="residents_committee", unit="xiaonanzhuang"),
       f"{base}?done=invited")
    ok(post(console, f"{base}/participants", csrf=csrf, type="resident_rep", name="王大爷", contact="13800001111"),
       f"{base}?done=invited")
    assert flow_settle(did) == "inviting"

    session = {"csrf": csrf, "kind": "talk", "held_at": "2026-11-12T19:00", "place": "社区活动室",
               "residents_present": "52", "minutes": "路灯太亮, 影响一层住户休息",
               "opinions": "3号楼居民: 晚上10点后调暗\n加灯罩\n", "options": "调暗\n换灯"}
    refused(post(console, f"{base}/sessions", **session), 409,
            "记录商量未完成", "必须参加的代表尚未邀请 (或已表示不参加): 物业公司 (property_company)")
    ok(post(console, f"{base}/participants", csrf=csrf, type="property_company", unit="property_co"),
       f"{base}?done=invited")
    company = next(p for p in detail(did)["participants"] if p["unit"] == "property_co")
    rsvp = f"{base}/participants/{company['participant_id']}/rsvp"
    refused(post(console, rsvp, csrf=csrf, answer="maybe"), 422, "「是否参加」请从列表中选择")
    ok(post(console, rsvp, csrf=csrf, answer="declined", note="负责人出差"), f"{base}?done=rsvp")
    refused(post(console, f"{base}/sessions", **session), 409, "物业公司")
    ok(post(console, rsvp, csrf=csrf, answer="accepted"), f"{base}?done=rsvp")

    # 组织商量: bad input named field by field
    ids = [p["participant_id"] for p in detail(did)["participants"]]
    for bad, message in (({"held_at": "昨天晚上"}, "「商量时间」时间格式不对"),
                         ({"held_at": ""}, "「商量时间」必须填写"),
                         ({"residents_present": "-1"}, "「到会居民人数」不能为负数"),
                         ({"method": "vote"}, "「表决票数」表决须填写赞成、反对、弃权票数"),
                         ({"method": "consensus", "item_description_0": "换灯"}, "「办理事项第 1 项的单位」不能为空"),
                         ({"method": "vote", "votes_for": "2", "votes_against": "9", "item_unit_0": "property_co",
                           "item_description_0": "换灯"}, "「表决票数」表决未通过"),
                         ({"method": "consensus", "item_unit_0": "property_co", "item_description_0": "换灯",
                           "item_due_at_0": "2020-05-01T00:00"}, "「办理事项第 1 项的办结时限」须晚于现在")):
        refused(post(console, f"{base}/sessions", **session | bad), 422, message)
    assert detail(did)["sessions"] == []
    r = console.post(f"{base}/sessions", data=session | {"attendance": ids}, follow_redirects=False)
    ok(r, f"{base}?done=session")
    assert flow_settle(did) == "deliberating"
    [first] = detail(did)["sessions"]
    assert first["held_at"] == "2026-11-12T19:00:00+08:00" and first["attendance"] == ids
    assert first["opinions"] == [{"by": "3号楼居民", "text": "晚上10点后调暗"}, {"by": None, "text": "加灯罩"}]
    assert (first["options"], first["residents_present"], first["decision"]) == (["调暗", "换灯"], 52, None)

    # the decision by vote, with items (unit + text, one with its own due date)
    from hotline.clock import local, now
    due = local(now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    ok(post(console, f"{base}/sessions", **session | {
        "kind": "meeting", "method": "vote", "votes_for": "41", "votes_against": "3", "votes_abstain": "8",
        "option": "换灯", "summary": "换低功率灯", "item_unit_0": "property_co",
        "item_description_0": "一层住户窗前路灯换成低功率灯", "item_due_at_0": due, "item_unit_1": "xiaonanzhuang",
        "item_description_1": "征求一层住户意见并回访"}), f"{base}?done=session")
    assert flow_settle(did) == "carrying_out"
    shown = detail(did)
    assert shown["sessions"][1]["decision"] == {"method": "vote", "option": "换灯", "summary": "换低功率灯",
                                                "votes": {"for": 41, "against": 3, "abstain": 8}}
    assert [(i["unit"], i["description"]) for i in shown["items"]] == [
        ("property_co", "一层住户窗前路灯换成低功率灯"), ("xiaonanzhuang", "征求一层住户意见并回访")]
    assert shown["items"][0]["due_at"].startswith(due) and shown["items"][1]["due_at"] is None
    refused(post(console, f"{base}/sessions", **session), 409, "已形成决定")
    page = console.get(base).text
    assert 'id="session"' not in page and 'id="invite"' not in page  # those steps are over
    assert cells(page, "items")[1][5] == "按时限标准"

    # 四议两公开 and 群众公开评: the result only in 反馈结果, the evaluation only after it
    ok(post(console, f"{base}/publicity", csrf=csrf, stage="decision", content="表决通过: 换低功率灯",
            place="社区公告栏", published_at="2026-11-13T09:00"), f"{base}?done=published")
    refused(post(console, f"{base}/publicity", csrf=csrf, stage="result", content="已换灯", place="社区公告栏"), 409,
            "办理事项全部办结 (反馈结果环节) 后才能公开实施结果")
    refused(post(console, f"{base}/publicity", csrf=csrf, stage="decision", content="", place="公告栏"), 422,
            "「公开内容」")
    refused(post(console, f"{base}/evaluations", csrf=csrf, satisfaction="satisfied"), 409, "实施结果公开后才能评议")
    for case_id, unit in zip(carry_out(did), ("property_co", "xiaonanzhuang")):
        handle_item_case(case_id, unit)
    from hotline.db import session_scope
    from services import deliberations
    with session_scope() as s:
        deliberations.signal_items_done(s)
    assert flow_settle(did) == "feedback"
    ok(post(console, f"{base}/publicity", csrf=csrf, stage="result", content="路灯已更换", place="居民微信群"),
       f"{base}?done=published")
    flow_settle(did)
    refused(post(console, f"{base}/evaluations", csrf=csrf, satisfaction="so-so"), 422, "「评价」请从列表中选择")
    ok(post(console, f"{base}/evaluations", csrf=csrf, satisfaction="satisfied", resident="3号楼居民",
            comment="晚上能睡好了"), f"{base}?done=evaluated")

    shown = detail(did)
    assert shown["concluded_at"] and shown["evaluations"]["by_satisfaction"]["satisfied"] == 1
    assert [p["stage"] for p in shown["publicity"]] == ["decision", "result"]
    assert shown["publicity"][0]["published_at"] == "2026-11-13T09:00:00+08:00"
    recorded = [t["actor"] for t in shown["timeline"] if t["kind"] in (
        "created", "participant.invited", "participant.rsvp", "session.held", "decided", "published.result",
        "evaluated")]
    assert len(recorded) == 11 and len(set(recorded)) == 1 and recorded[0].endswith(":supervisor")
    page = console.get(base).text
    assert "13800001111" not in page and "满意 1" in page
    assert [row[0] for row in cells(page, "publicity")] == ["决议公开", "实施结果公开"]


def test_proposals_are_listed_and_a_supervisor_makes_one_a_topic_with_its_cases(console, district):
    from tests.test_topic_proposals import reported
    lights = [reported("street_lights", "小南庄社区", p) for p in
              ("13900000001", "13900000002", "13900000003", "13900000001", None)]
    csrf = login(console, district.staff_tokens["supervisor"])
    page = console.get("/console/deliberations").text
    [row] = cells(page, "proposals")
    assert row[:3] == ["小南庄社区", "路灯", "热点: 30 天内 5 件, 4 位诉求人"]
    assert "1390000" not in page and "陈阿姨" not in page

    refused(post(console, "/console/deliberations/proposals", csrf=csrf, key="xiaonanzhuang/street_lights",
                 topic_type="tennis"), 422, "「议题类型」请从列表中选择")
    r = post(console, "/console/deliberations/proposals", csrf=csrf, key="xiaonanzhuang/street_lights",
             topic_type="property", title="小南庄路灯太亮")
    assert r.status_code == 303 and r.headers["location"].endswith("?done=created")
    did = int(r.headers["location"].split("/")[-1].split("?")[0])
    shown = detail(did)
    assert (shown["origin"], shown["title"], shown["topic_type"]) == ("hot_spot", "小南庄路灯太亮", "property")
    assert sorted(int(c["case_id"]) for c in shown["linked_cases"]) == lights
    for case_id in lights:  # the citizens are told, as the convert path does
        assert any(t.kind == "deliberation.linked" for t in timeline(case_id))
    assert "热点" in console.get(r.headers["location"]).text  # origin label
    refused(post(console, "/console/deliberations/proposals", csrf=csrf, key="xiaonanzhuang/street_lights"), 409,
            "该议题建议已不存在")
    assert cells(console.get("/console/deliberations").text, "proposals") == [["暂无建议。"]]
