"""Units answering on their work orders (CONTRACT 2b) and the registry's token rotation (2d), through the API
(TestClient) on a temporary SQLite DB: repeated events without a second effect, who sent each callback, the
per-case delivery attempt log (against a real receiver on loopback), old and new tokens after a rotation.

Cases are recorded, collected and dispatched through the one case writer, as the case flow does; the flow itself
does not run, so the signals a unit's answer leaves stay pending and can be counted."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
import yaml

from hotline.clock import now
from hotline.runtime import free_port
from tests.conftest import FAST_ADMIN_TOKEN, receive_and_dispatch

ADMIN = {"Authorization": f"Bearer {FAST_ADMIN_TOKEN}"}


@pytest.fixture
def api(db):
    """The API on the temporary DB; no routing rules, so every case goes to the street of its place (直派)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    (db / "routing.yaml").write_text(yaml.safe_dump({"on_reject": "street", "rules": []}), encoding="utf-8")
    with TestClient(create_app()) as client:
        yield client


def put_unit(api, code: str, level: str, parent: str | None = None, webhook_url: str | None = None) -> dict:
    r = api.put(f"/api/units/{code}", headers=ADMIN,
                json={"name": f"name of {code}", "level": level, "parent": parent, "webhook_url": webhook_url})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def units(api) -> dict[str, dict]:
    """A district, its street (the lead unit of every case here) and a community, with their credentials."""
    return {"hd": put_unit(api, "hd", "district"), "st_a": put_unit(api, "st_a", "street", "hd"),
            "c1": put_unit(api, "c1", "community", "st_a")}


def bearer(creds: dict) -> dict:
    return {"Authorization": f"Bearer {creds['token']}"}


def open_case() -> tuple[int, int]:
    """Record, collect and dispatch one case in community c1; returns (case id, the lead work order's id)."""
    from sqlmodel import select

    from hotline.db import session_scope
    from models import WorkOrder
    case_id = receive_and_dispatch(category="noise", description="楼下施工")
    with session_scope() as s:
        [wo] = s.exec(select(WorkOrder).where(WorkOrder.case_id == case_id)).all()
        assert wo.unit == "st_a"
        return case_id, wo.id


def act(api, work_order_id: int, creds: dict, **event):
    return api.post(f"/api/work-orders/{work_order_id}/events", json=event, headers=bearer(creds))


def ok(response, duplicate: bool) -> dict:
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is duplicate, response.text
    return response.json()


def detail(api, case_id: int) -> dict:
    r = api.get(f"/api/cases/{case_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def entries(api, case_id: int, kind: str) -> list[dict]:
    return [t for t in detail(api, case_id)["timeline"] if t["kind"] == kind]


def signalled(case_id: int) -> list[str]:
    """The types of the unit events left for the case flow, in order."""
    from sqlmodel import col, select

    from hotline.db import read_scope
    from models import CaseSignal
    with read_scope() as s:
        return [sig.payload["type"] for sig in s.exec(select(CaseSignal).where(
            CaseSignal.case_id == case_id, CaseSignal.kind == "unit_event").order_by(col(CaseSignal.id))).all()]


def extension_requests(api, case_id: int) -> list[dict]:
    return [e for e in detail(api, case_id)["escalations"] if e["trigger"] == "extension_request"]


# ---------------------------------------------------------------- a repeated event has no second effect

def test_a_repeated_contacted_is_acknowledged_without_a_second_effect(api, units):
    case_id, wo = open_case()
    st = units["st_a"]
    ok(act(api, wo, st, type="accept"), duplicate=False)
    assert ok(act(api, wo, st, type="contacted", note="已电话联系"), duplicate=False)["status"] == "in_progress"
    again = ok(act(api, wo, st, type="contacted", note="已电话联系"), duplicate=True)
    assert again["status"] == "in_progress"
    assert len(entries(api, case_id, "unit.contacted")) == 1
    assert signalled(case_id) == ["accept"]  # the lead unit's contact is recorded; nothing for the case run to do
    ok(act(api, wo, st, type="complete", resolved=True), duplicate=False)
    ok(act(api, wo, st, type="contacted"), duplicate=True)  # a late retry after completion: still the same contact
    assert len(entries(api, case_id, "unit.contacted")) == 1 and signalled(case_id) == ["accept", "complete"]


def test_progress_notes_repeat_without_an_id_and_happen_once_with_one(api, units):
    case_id, wo = open_case()
    st = units["st_a"]
    ok(act(api, wo, st, type="accept"), duplicate=False)
    ok(act(api, wo, st, type="progress", note="已派人查看"), duplicate=False)
    ok(act(api, wo, st, type="progress", note="已派人查看"), duplicate=False)  # two reports, by design
    assert len(entries(api, case_id, "unit.progress")) == 2

    ok(act(api, wo, st, type="progress", note="施工方已整改", event_id="p-42"), duplicate=False)
    ok(act(api, wo, st, type="progress", note="施工方已整改", event_id="p-42"), duplicate=True)
    progress = entries(api, case_id, "unit.progress")
    assert len(progress) == 3 and progress[-1]["data"]["event_id"] == "p-42"
    assert signalled(case_id) == ["accept"]  # progress notes are the lead unit's record: they wake no case run

    reused = act(api, wo, st, type="complete", resolved=True, event_id="p-42")  # an id names one event
    assert reused.status_code == 409 and reused.json()["current"] == "in_progress"
    assert "p-42" in reused.json()["detail"] and "progress" in reused.json()["detail"]
    assert entries(api, case_id, "unit.complete") == []

    blank = act(api, wo, st, type="progress", event_id="  ")
    assert blank.status_code == 422 and [e["field"] for e in blank.json()["detail"]] == ["event_id"]


def test_an_event_id_makes_a_retried_answer_a_repeat_even_after_the_order_moved_on(api, units):
    case_id, wo = open_case()
    st = units["st_a"]
    ok(act(api, wo, st, type="accept", event_id="a-1"), duplicate=False)
    ok(act(api, wo, st, type="contacted", event_id="c-1"), duplicate=False)
    # the unit never saw the answer to its accept and sends it again: the id says it is the same event
    assert ok(act(api, wo, st, type="accept", event_id="a-1"), duplicate=True)["status"] == "in_progress"
    without_id = act(api, wo, st, type="accept")  # the same answer without an id is out of order
    assert without_id.status_code == 409 and without_id.json()["current"] == "in_progress"
    assert len(entries(api, case_id, "unit.accept")) == 1 and signalled(case_id) == ["accept"]
    other = open_case()[1]  # ids are per work order: the same id on another order is another event
    ok(act(api, other, st, type="accept", event_id="a-1"), duplicate=False)


def test_an_extend_while_the_same_request_is_pending_opens_one_request(api, units):
    case_id, wo = open_case()
    st = units["st_a"]
    ok(act(api, wo, st, type="accept"), duplicate=False)
    due = datetime.fromisoformat(detail(api, case_id)["work_orders"][0]["due_at"])
    until, later = (due + timedelta(days=3)).isoformat(), (due + timedelta(days=5)).isoformat()

    ok(act(api, wo, st, type="extend", reason="需协调产权单位", until=until), duplicate=False)
    ok(act(api, wo, st, type="extend", reason="需协调产权单位", until=until), duplicate=True)
    [request] = extension_requests(api, case_id)
    assert len(entries(api, case_id, "unit.extend")) == 1

    other = act(api, wo, st, type="extend", reason="还需更多时间", until=later)
    assert other.status_code == 409 and other.json()["current"] == "accepted"
    assert "still pending" in other.json()["detail"] and len(extension_requests(api, case_id)) == 1

    r = api.post(f"/api/escalations/{request['id']}/decision", headers=ADMIN,
                 json={"action": "extend", "approve": False, "reason": "理由不充分"})
    assert r.status_code == 200, r.text
    ok(act(api, wo, st, type="extend", reason="还需更多时间", until=later, event_id="x-7"), duplicate=False)
    assert [e["status"] for e in extension_requests(api, case_id)] == ["decided", "open"]
    second = extension_requests(api, case_id)[1]
    r = api.post(f"/api/escalations/{second['id']}/decision", headers=ADMIN,
                 json={"action": "extend", "approve": False, "reason": "仍不同意"})
    assert r.status_code == 200, r.text
    # nothing is pending any more: only the event id tells the retry from a new request
    ok(act(api, wo, st, type="extend", reason="还需更多时间", until=later, event_id="x-7"), duplicate=True)
    assert len(extension_requests(api, case_id)) == 2 and len(entries(api, case_id, "unit.extend")) == 2


# ---------------------------------------------------------------- who sent it

def test_every_callback_is_on_the_timeline_with_the_unit_that_sent_it(api, units):
    case_id, wo = open_case()
    st = units["st_a"]
    due = datetime.fromisoformat(detail(api, case_id)["work_orders"][0]["due_at"])
    for event in ({"type": "accept", "note": "签收"}, {"type": "contacted", "note": "已联系市民"},
                  {"type": "progress", "note": "已整改"},
                  {"type": "extend", "reason": "需复查", "until": (due + timedelta(days=1)).isoformat()},
                  {"type": "complete", "resolved": True, "note": "已办结"}):
        ok(act(api, wo, st, **event), duplicate=False)
    stranger = act(api, wo, units["c1"], type="progress", note="不是我的工单")
    assert stranger.status_code == 404
    callbacks = [t for t in detail(api, case_id)["timeline"] if t["kind"].startswith("unit.")]
    assert [(t["kind"], t["actor"], t["note"]) for t in callbacks] == [
        ("unit.accept", "st_a", "签收"), ("unit.contacted", "st_a", "已联系市民"), ("unit.progress", "st_a", "已整改"),
        ("unit.extend", "st_a", "需复查"), ("unit.complete", "st_a", "已办结")]
    assert all(t["data"]["work_order_id"] == wo for t in callbacks)


# ---------------------------------------------------------------- the delivery log per case

def test_the_case_shows_each_delivery_attempt(api, db):
    from hotline.receiver import Receiver
    from notifications.webhooks import deliver_due
    receiver = Receiver(port=free_port()).start()
    try:
        put_unit(api, "hd", "district")
        st = put_unit(api, "st_a", "street", "hd", webhook_url=receiver.hook_url("st_a"))
        put_unit(api, "c1", "community", "st_a")
        receiver.secrets["st_a"] = st["webhook_secret"]
        receiver.fail_next["st_a"] = [500]
        case_id, _wo = open_case()
        t0 = now()
        assert asyncio.run(deliver_due(case_id, at=t0))["retry"] == 1
        assert asyncio.run(deliver_due(case_id, at=t0 + timedelta(minutes=5)))["delivered"] == 1
    finally:
        receiver.stop()

    [delivery] = detail(api, case_id)["deliveries"]
    assert (delivery["type"], delivery["status"], delivery["attempts"]) == ("work_order.assigned", "delivered", 2)
    log = delivery["attempt_log"]
    assert [(a["status_code"], a["outcome"]) for a in log] == [(500, "retry"), (204, "delivered")]
    assert log[0]["error"].startswith("HTTP 500") and log[1]["error"] is None
    assert all(isinstance(a["latency_ms"], int) and a["latency_ms"] >= 0 for a in log)
    assert [datetime.fromisoformat(a["at"]) for a in log] == [t0, t0 + timedelta(minutes=5)]
    [received] = receiver.of(unit="st_a")
    assert received.webhook_id == delivery["webhook_id"]
    per_unit = api.get("/api/units/st_a/deliveries", headers=ADMIN).json()["deliveries"]
    assert [d["attempt_log"] for d in per_unit] == [log]  # the same log, per unit and per case


# ---------------------------------------------------------------- token rotation

def test_after_a_rotation_the_old_token_stops_and_the_new_one_works(api, units):
    old = units["st_a"]
    assert api.get("/api/work-orders", headers=bearer(old)).status_code == 200
    assert api.post("/api/units/st_a/rotate", headers=bearer(old)).status_code == 403  # only the admin rotates
    assert api.post("/api/units/no_such_unit/rotate", headers=ADMIN).status_code == 404
    before = now()
    r = api.post("/api/units/st_a/rotate", headers=ADMIN)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["code"] == "st_a" and new["token"] != old["token"]
    assert new["webhook_secret"].startswith("whsec_") and new["webhook_secret"] != old["webhook_secret"]
    grace_until = datetime.fromisoformat(new["previous_secret_valid_until"])  # the shipped policy: 24 h
    assert before + timedelta(hours=24) <= grace_until <= now() + timedelta(hours=24)

    assert api.get("/api/work-orders", headers=bearer(old)).status_code == 401
    assert api.get("/api/work-orders", headers=bearer(new)).status_code == 200
    _case_id, wo = open_case()
    assert act(api, wo, old, type="accept").status_code == 401
    ok(act(api, wo, new, type="accept"), duplicate=False)
    assert api.get("/api/units/st_a/deliveries", headers=bearer(old)).status_code == 401
    assert api.get("/api/units/st_a/deliveries", headers=bearer(new)).status_code == 200
