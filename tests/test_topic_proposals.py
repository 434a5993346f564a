"""议题建议, fast: topics proposed from hot spots and repeated requests (services.topic_proposals), the thresholds
read from policies/deliberation.yaml, places with an open deliberation left out; `GET /api/deliberations/proposals`
and adopting one with its cases (their citizens told). Temporary SQLite DB, the demo district, no stack."""
from __future__ import annotations

import itertools
from datetime import timedelta

import yaml
from fastapi.testclient import TestClient

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN
from tests.test_deliberations import district, write  # noqa: F401
from tests.test_routing_ladder import timeline

_ref = itertools.count(1)


def reported(category: str, community: str, phone: str | None, days_ago: float = 1) -> int:
    """A case recorded and collected (category, jurisdiction, repeat links) `days_ago`."""
    from hotline.clock import now
    from hotline.db import session_scope
    from services import cases
    n = next(_ref)
    fields = {"source": "hotline", "source_ref": f"tp-{n}", "category": category, "description": "d",
              "location": {"community": community}, "reported_at": now() - timedelta(days=days_ago),
              "citizen_name": "陈阿姨", "citizen_phone": phone, "anonymous": phone is None}
    with session_scope() as s:
        case_id = cases.create_case(session=s, fields=fields)[0].id
    with session_scope() as s:
        cases.collect(s, case_id)
    return case_id


def seed() -> dict[str, list[int]]:
    return {
        # 路灯 at 小南庄: 5 cases from 4 citizens (one anonymous) — a hot spot
        "lights": [reported("street_lights", "小南庄社区", p) for p in
                   ("13900000001", "13900000002", "13900000003", "13900000001", None)],
        # 供水水质 at 毛纺北小区: one citizen three times — repeated requests
        "water": [reported("water_quality", "毛纺北小区社区", "13900000009", days_ago=d) for d in (20, 9, 2)],
        # 噪声 at 万泉庄: 4 citizens, one short of the hot-spot threshold
        "noise": [reported("noise", "万泉庄社区", f"1390000002{i}") for i in range(4)],
        # 环境卫生 at 安宁里: 6 citizens, but 40 days ago (outside the 30-day window)
        "old": [reported("sanitation", "安宁里社区", f"1390000003{i}", days_ago=40) for i in range(6)],
        # 咨询: excluded by the policy, however many
        "enquiry": [reported("enquiry", "万泉庄社区", f"1390000004{i}") for i in range(6)],
    }


def proposed() -> list[dict]:
    from hotline.db import read_scope
    from services import topic_proposals
    with read_scope() as s:
        return topic_proposals.proposals(s)


def test_hot_spots_and_repeated_requests_are_proposed_by_the_policy(district, db):
    ids = seed()
    found = proposed()
    assert [(p["key"], p["reasons"], p["cases"], p["citizens"]) for p in found] == [
        ("xiaonanzhuang/street_lights", ["hot_spot"], 5, 4),
        ("maofang/water_quality", ["repeated"], 3, 1)]
    lights, water = found
    assert lights["case_ids"] == [str(i) for i in ids["lights"]] and lights["street"] == "haidian_st"
    assert lights["title"] == "小南庄社区路灯问题" and lights["topic_type"] == "public_affairs"
    assert lights["reason_label"] == "热点: 30 天内 5 件, 4 位诉求人"
    assert water["reason_label"] == "重复诉求: 同一诉求人反映 3 次" and water["most_by_one_citizen"] == 3
    assert "1390000" not in str(found) and "陈阿姨" not in str(found)  # counts and numbers only

    # a district edits the thresholds (and the topic type for a category) without code
    path = db / "deliberation.yaml"
    policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    policy["proposals"]["hot_spot_min_cases"] = 4
    policy["proposals"]["topic_types"]["noise"] = "dispute"
    path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    noise = next(p for p in proposed() if p["key"] == "wanquanzhuang/noise")
    assert (noise["cases"], noise["topic_type"], noise["topic_label"]) == (4, "dispute", "矛盾调处")

    # a place with an open deliberation is not proposed again
    from services import deliberations
    write(deliberations.create, topic_type="public_affairs", title="水质", description=None,
          location={"community": "maofang"}, case_ids=[], actor="admin")
    assert "maofang/water_quality" not in [p["key"] for p in proposed()]


def test_the_api_lists_proposals_and_a_supervisor_adopts_one_with_its_cases(district):
    from api.main import create_app
    ids = seed()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    community = {"Authorization": f"Bearer {district.unit_tokens['xiaonanzhuang']}"}
    other = {"Authorization": f"Bearer {district.unit_tokens['maofang']}"}
    with TestClient(create_app()) as api:
        assert "/api/deliberations/proposals" in api.get("/openapi.json").json()["paths"]
        r = api.get("/api/deliberations/proposals", headers=admin)
        assert r.status_code == 200 and [p["key"] for p in r.json()] == ["xiaonanzhuang/street_lights",
                                                                        "maofang/water_quality"]
        assert [p["key"] for p in api.get("/api/deliberations/proposals", headers=community).json()] == [
            "xiaonanzhuang/street_lights"]  # a community sees its own area's
        assert [p["key"] for p in api.get("/api/deliberations/proposals", headers=other).json()] == [
            "maofang/water_quality"]
        key = {"key": "xiaonanzhuang/street_lights"}
        assert api.post("/api/deliberations/proposals", json=key, headers=community).status_code == 403
        r = api.post("/api/deliberations/proposals", json=key | {"topic_type": "tennis"}, headers=admin)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "topic_type"
        r = api.post("/api/deliberations/proposals", json=key | {"topic_type": "property"}, headers=admin)
        assert r.status_code == 201, r.text
        d = r.json()
        assert (d["origin"], d["topic_type"], d["title"], d["jurisdiction"]["community"]) == (
            "hot_spot", "property", "小南庄社区路灯问题", "xiaonanzhuang")
        assert sorted(int(c["case_id"]) for c in d["linked_cases"]) == ids["lights"]
        assert d["location"] == {"district": "haidian", "street": "haidian_st", "community": "xiaonanzhuang"}
        r = api.post("/api/deliberations/proposals", json=key, headers=admin)  # its place is deliberating now
        assert r.status_code == 409 and "xiaonanzhuang/street_lights" in r.json()["detail"]
        assert [p["key"] for p in api.get("/api/deliberations/proposals", headers=admin).json()] == [
            "maofang/water_quality"]
        assert api.post("/api/deliberations/proposals", json={"key": "nowhere"}, headers=admin).status_code == 422
    for case_id in ids["lights"]:  # every linked citizen is told, as when converting a case
        [told] = [t for t in timeline(case_id) if t.kind == "deliberation.linked"]
        assert d["number"] in told.data["message"]
