"""Routing, the escalation ladder and policies in force, on a temporary SQLite DB with the demo district registered
through the API exactly as the test stack registers it (hotline.demo.register_district); cases are driven through
the one case writer (services/cases.py) the way the case flow and the deadline watch drive them."""
from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from fastapi.testclient import TestClient

from hotline.demo import register_district
from hotline.receiver import Receiver
from hotline.settings import REPO_ROOT
from tests.conftest import FAST_ADMIN_TOKEN as ADMIN

_ref = itertools.count(1)
T0 = datetime(2026, 11, 10, 2, 0, tzinfo=timezone.utc)  # Tuesday 10:00 in Beijing, a working day


@pytest.fixture
def district(db):
    """The demo district (demo/district.yaml) registered through the API; yields the policy folder."""
    from api.main import create_app
    with TestClient(create_app()) as api:
        registered = register_district(api, ADMIN, Receiver(port=9))  # the receiver is only named, never called
    assert registered.unit_tokens
    return db


@pytest.fixture
def clock(monkeypatch):
    """The case writer's clock, moved by hand."""
    from services import cases

    class Clock:
        at = T0

        def advance(self, **delta) -> datetime:
            self.at += timedelta(**delta)
            return self.at

    fixed = Clock()
    monkeypatch.setattr(cases, "now", lambda: fixed.at)
    return fixed


def new_case(category: str, community: str = "小南庄社区", urgency: str = "normal") -> int:
    """Record, collect and dispatch one case (the flow's first steps); returns its id."""
    from hotline.db import session_scope
    from services import cases
    n = next(_ref)
    fields = {"source": "hotline", "source_ref": f"rl-{n}", "category": category, "description": "d",
              "urgency": urgency, "location": {"community": community}, "citizen_name": "陈阿姨",
              "citizen_phone": f"1390000{n:04d}", "reported_at": T0}
    with session_scope() as s:
        case_id = cases.create_case(session=s, fields=fields)[0].id
    with session_scope() as s:
        cases.collect(s, case_id)
    with session_scope() as s:
        cases.dispatch(s, case_id)
    return case_id


def case(case_id: int):
    from hotline.db import read_scope
    from models import Case
    with read_scope() as s:
        return s.get(Case, case_id)


def orders(case_id: int) -> list:
    from hotline.db import read_scope
    from models import WorkOrder
    from sqlmodel import col, select
    with read_scope() as s:
        return list(s.exec(select(WorkOrder).where(WorkOrder.case_id == case_id).order_by(col(WorkOrder.id))))


def timeline(case_id: int) -> list:
    from hotline.db import read_scope
    from models import TimelineEntry
    from sqlmodel import col, select
    with read_scope() as s:
        return list(s.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id)
                           .order_by(col(TimelineEntry.id))))


def escalations(case_id: int) -> list:
    from hotline.db import read_scope
    from models import Escalation
    from sqlmodel import col, select
    with read_scope() as s:
        return list(s.exec(select(Escalation).where(Escalation.case_id == case_id).order_by(col(Escalation.id))))


def unit_answers(case_id: int, unit: str, *events: str) -> None:
    """The unit answers its open order with `events`; the case flow applies them (settle)."""
    from hotline.db import session_scope
    from models import Unit
    from services import cases
    wo = orders(case_id)[-1]
    assert wo.unit == unit
    for kind in events:
        with session_scope() as s:
            event = {"type": kind} | ({"resolved": True} if kind == "complete" else {})
            cases.apply_unit_event(session=s, unit=s.get(Unit, unit), work_order_id=wo.id, event=event)
        with session_scope() as s:
            cases.settle(s, case_id)


def lapse(case_id: int, which: str = "due") -> None:
    """The deadline watch finds the open lead order's deadline lapsed; the case flow applies it."""
    from hotline.db import session_scope
    from models import WorkOrder
    from services import cases
    with session_scope() as s:
        wo = s.get(WorkOrder, [o for o in orders(case_id) if o.role == "lead"][-1].id)
        assert cases.signal_lapse(s, wo, which) is not None
    with session_scope() as s:
        cases.settle(s, case_id)


def edit(policy_dir, name: str, change) -> None:
    path = policy_dir / name
    path.write_text(yaml.safe_dump(change(yaml.safe_load(path.read_text(encoding="utf-8"))), allow_unicode=True),
                    encoding="utf-8")


# ---------------------------------------------------------------- routing (权责清单)

def test_the_demo_district_has_every_unit_the_responsibility_list_names(district):
    from api.main import create_app
    with TestClient(create_app()) as api:
        check = api.get("/api/policies/check", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert check["ok"] is True, check["problems"]


@pytest.mark.parametrize("category, utility", [
    ("water_quality", "water_co"), ("heating", "heating_co"), ("gas", "gas_co"), ("power_supply", "power_co")])
def test_utility_categories_go_straight_to_the_utility(district, category, utility):
    case_id = new_case(category)
    [order] = orders(case_id)
    assert (order.unit, order.role, order.reason) == (utility, "lead", "dispatch")
    assert case(case_id).lead_unit == utility
    [routed] = [t for t in timeline(case_id) if t.kind == "routed"]
    assert "公共服务企业直派" in routed.data["rule"]
    from hotline.db import read_scope
    from models import Unit
    with read_scope() as s:
        assert s.get(Unit, utility).level == "utility"


def test_a_category_without_a_rule_goes_to_the_street(district):
    [order] = orders(new_case("noise"))
    assert (order.unit, order.reason) == ("haidian_st", "direct")


def test_an_unknown_category_falls_back_to_uncategorised(district):
    case_id = new_case("not_a_category")
    assert case(case_id).category == "uncategorised"
    [unknown] = [t for t in timeline(case_id) if t.kind == "category_unknown"]
    assert unknown.data == {"given": "not_a_category"}
    [order] = orders(case_id)
    assert (order.unit, order.reason) == ("haidian_st", "direct")  # no rule for it: 直派 to the street


# ---------------------------------------------------------------- 首接负责 and 重办

def test_reopen_goes_to_the_owner_not_the_unit_that_held_it_last(district, clock):
    from hotline.db import session_scope
    from services import cases
    case_id = new_case("sanitation", community="万泉庄社区")
    unit_answers(case_id, "wanquanzhuang", "accept")
    assert case(case_id).owner_unit == "wanquanzhuang"  # 首接负责: the first unit that accepted owns it
    clock.advance(days=30)
    lapse(case_id)  # the community runs out of time: the street gets an order
    assert case(case_id).lead_unit == "haidian_st"
    unit_answers(case_id, "haidian_st", "accept", "contacted", "complete")
    assert case(case_id).status == "awaiting_follow_up"
    with session_scope() as s:
        cases.record_follow_up(session=s, case_id=case_id, actor="t",
                               answer={"reached": True, "resolved": False, "satisfaction": "unsatisfied"})
    with session_scope() as s:
        cases.settle(s, case_id)
    reopened = orders(case_id)[-1]
    assert (reopened.unit, reopened.reason) == ("wanquanzhuang", "reopen")
    assert (case(case_id).lead_unit, case(case_id).owner_unit) == ("wanquanzhuang", "wanquanzhuang")
    assert [t.data["unit"] for t in timeline(case_id) if t.kind == "reopened"] == ["wanquanzhuang"]


# ---------------------------------------------------------------- the ladder's top rung: 包案

def test_when_the_district_runs_out_of_time_the_ladders_leader_takes_over(district, clock):
    from services import policies
    rung = policies.escalation_policy().take_over
    assert rung is not None and rung.leader
    case_id = new_case("illegal_parking")  # → 城管 (a department: it answers to the district)
    clock.advance(days=30)
    lapse(case_id)
    assert orders(case_id)[-1].unit == "haidian"
    district_order = orders(case_id)[-1]
    at = clock.advance(days=30)
    lapse(case_id)  # the district's own time runs out: 包案

    assert case(case_id).taken_over_by == rung.leader
    latest = escalations(case_id)[-1]
    assert (latest.trigger, latest.from_unit, latest.to_unit, latest.status) == (
        "overdue_completion", "haidian", None, "open")  # supervisors still see and resolve it
    assert latest.decision == {"leader": rung.leader}
    held = orders(case_id)[-1]
    assert held.id == district_order.id and held.status in ("assigned", "accepted")  # the district keeps it
    calendar = policies.calendar()
    assert held.due_at == rung.due_within.after(at, calendar) and not held.due_lapsed  # the rung's own time
    assert held.respond_by == rung.respond_within.after(at, calendar) and not held.respond_lapsed
    assert [t.data["leader"] for t in timeline(case_id) if t.kind == "taken_over"] == [rung.leader]

    clock.advance(days=30)
    lapse(case_id)  # the 包案 time runs out too: the top of the ladder, supervisors only
    assert len(escalations(case_id)) == 3 and escalations(case_id)[-1].decision in (None, {})
    assert [t.kind for t in timeline(case_id)].count("taken_over") == 1
    assert orders(case_id)[-1].id == district_order.id


def test_without_the_rung_supervisors_alone_decide_above_the_district(district, clock):
    edit(district, "escalation.yaml", lambda p: {k: v for k, v in p.items() if k != "take_over"})
    case_id = new_case("illegal_parking")
    clock.advance(days=30)
    lapse(case_id)
    clock.advance(days=30)
    lapse(case_id)
    assert case(case_id).taken_over_by is None
    assert escalations(case_id)[-1].to_unit is None and "taken_over" not in [t.kind for t in timeline(case_id)]


def test_a_supervisors_take_over_gets_the_rungs_allowed_time(district, clock):
    from hotline.db import session_scope
    from services import cases, policies
    case_id = new_case("illegal_parking")
    at = clock.advance(days=30)
    lapse(case_id)
    [escalation] = escalations(case_id)
    with session_scope() as s:
        cases.decide(session=s, escalation_id=escalation.id, action="take_over", reason="疑难案件",
                     actor="supervisor", leader="区委副书记")
    rung = policies.escalation_policy().take_over
    assert case(case_id).taken_over_by == "区委副书记"
    assert orders(case_id)[-1].due_at == rung.due_within.after(at, policies.calendar())


# ---------------------------------------------------------------- a broken policy file: the last good one holds

def _break_three(policy_dir) -> None:
    edit(policy_dir, "sla.yaml", lambda p: p | {"urgency": p["urgency"] | {
        "normal": {"respond_within": "soon", "due_within": "7wd"}}})
    edit(policy_dir, "routing.yaml", lambda p: p | {"rules": [
        {"name": "typo", "categories": ["sanitaton"], "unit": "haidian_st"}, *p["rules"]]})
    edit(policy_dir, "escalation.yaml", lambda p: p | {"max_bounces": "two"})


def test_a_broken_policy_file_keeps_its_last_good_version_in_force(district, clock, caplog):
    from hotline.db import session_scope
    from services import cases, policies
    good_sla = policies.sla_policy()
    new_case("heating")  # a good load of every file the case steps use
    _break_three(district)

    with caplog.at_level(logging.ERROR, logger="services.policies"):
        case_id = new_case("gas")  # collect and dispatch still work, on the last good versions
        [order] = orders(case_id)
        assert order.unit == "gas_co"
        sla = good_sla.for_case("normal", "gas")
        assert order.respond_by == sla.respond_within.after(T0, policies.calendar())
        assert policies.escalation_policy().max_bounces == 2
        with session_scope() as s:  # the deadline watch's reminders
            assert cases.send_reminders(s, T0 + timedelta(days=60)) == 4  # 50 % and 80 % of both orders
        assert policies.sla_policy() == good_sla
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for name, field in (("sla.yaml", "urgency.normal.respond_within"), ("routing.yaml", "unknown categories"),
                        ("escalation.yaml", "max_bounces")):
        matching = [e for e in errors if name in e and field in e and "last good" in e]
        assert len(matching) == 1, (name, errors)  # logged once, not at every read

    from api.main import create_app
    with TestClient(create_app()) as api:
        check = api.get("/api/policies/check", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert check["ok"] is False
    for name, field in (("sla.yaml", "urgency.normal.respond_within"), ("routing.yaml", "['sanitaton']"),
                        ("escalation.yaml", "max_bounces")):
        assert any(name in p and field in p and "last good version stays in force" in p
                   for p in check["problems"]), (name, check["problems"])


def test_other_processes_fall_back_to_the_same_last_good_version(district):
    """Each flow run has its own process: the last good version is kept in the data folder, not in memory."""
    from services import policies
    good = policies.sla_policy().urgency["normal"].respond_within
    policies.escalation_policy()
    _break_three(district)
    probe = ("from services import policies; p = policies.sla_policy(); "
             "print(p.urgency['normal'].respond_within, policies.escalation_policy().max_bounces)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT,
                         env=os.environ | {"PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(good), "2"]


def test_a_fixed_file_applies_again(district):
    from services import policies
    policies.sla_policy()
    edit(district, "sla.yaml", lambda p: p | {"reminders": [1.5]})
    assert policies.sla_policy().reminders == [0.5, 0.8]
    edit(district, "sla.yaml", lambda p: p | {"reminders": [0.25]})
    assert policies.sla_policy().reminders == [0.25]


def test_with_no_good_version_yet_a_broken_file_fails_loudly(db):
    from services import policies
    _break_three(db)  # before anything was loaded from this folder
    with pytest.raises(policies.PolicyError) as err:
        policies.sla_policy()
    assert "sla.yaml" in str(err.value) and "urgency.normal.respond_within" in str(err.value)
    with pytest.raises(policies.PolicyError, match=r"routing.yaml.*unknown categories \['sanitaton'\]"):
        policies.routing_policy()
    problems, _ = policies.check_all()
    assert any("sla.yaml" in p and "no good version loaded yet" in p for p in problems), problems
