"""回访 and 考评 driven through the one case writer (services/cases.py) on a temporary SQLite DB, step by step as
the case flow does it (record → settle → close): what counts as a response, 退单, 重办 or escalation after a failed
follow-up, anonymous requests, a 重办 not reached, and the month's rates rebuilt from the timeline alone."""
from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from tests.conftest import receive_and_dispatch

# the test's responsibility list (the temporary copy of routing.yaml; the shipped one is not touched)
ROUTING = {"on_reject": "street", "rules": [
    {"name": "路灯 → 社区", "categories": ["street_lights"], "unit": "{community}"},
    {"name": "下水道 → 水务局", "categories": ["sewer_blockage"], "unit": "dept_w"},
]}


@pytest.fixture
def district(db):
    """A district, a street, a community under it and a department; the routing above."""
    from hotline.db import session_scope
    from models import Unit
    with session_scope() as s:
        for code, level, parent in (("hd", "district", None), ("st_a", "street", "hd"),
                                    ("c1", "community", "st_a"), ("dept_w", "department", None)):
            s.add(Unit(code=code, name=f"name of {code}", level=level, parent=parent, token_hash=f"h-{code}",
                       webhook_secret="s"))
    (db / "routing.yaml").write_text(yaml.safe_dump(ROUTING, allow_unicode=True), encoding="utf-8")
    return db


# ---------------------------------------------------------------- driving a case as its flow does

def submit(category="street_lights", anonymous=False) -> int:
    """受理, 采集, 派单; returns the case id."""
    return receive_and_dispatch(category=category, anonymous=anonymous)


def advance(case_id: int) -> None:
    """The flow's loop: apply the pending signals; once evaluating, 考评 and 办结."""
    from hotline.db import session_scope
    from models import CaseStatus
    from services import cases
    with session_scope() as s:
        status = cases.settle(s, case_id)
    if status == CaseStatus.evaluating:
        with session_scope() as s:
            cases.evaluate_and_close(s, case_id)


def act(order_id: int, kind: str, **event) -> None:
    """The order's unit answers (as POST /api/work-orders/{id}/events does), then the flow applies it."""
    from hotline.db import session_scope
    from models import Unit, WorkOrder
    from services import cases
    with session_scope() as s:
        wo = s.get(WorkOrder, order_id)
        cases.apply_unit_event(session=s, unit=s.get(Unit, wo.unit), work_order_id=order_id,
                               event={"type": kind, **event})
        case_id = wo.case_id
    advance(case_id)


def handle(order_id: int, resolved: bool = True) -> None:
    for kind in ("accept", "contacted"):
        act(order_id, kind)
    act(order_id, "complete", resolved=resolved)


def follow_up(case_id: int, **answer) -> None:
    from hotline.db import session_scope
    from services import cases
    with session_scope() as s:
        cases.record_follow_up(session=s, case_id=case_id, answer={"reached": True, **answer}, actor="fu-1")
    advance(case_id)


def miss_calls(case_id: int) -> None:
    """Every allowed call attempt fails (policy follow_up.max_attempts)."""
    from hotline.db import session_scope
    from services import cases, policies
    for _ in range(policies.sla_policy().follow_up.max_attempts):
        with session_scope() as s:
            cases.record_follow_up(session=s, case_id=case_id, answer={"reached": False}, actor="fu-1")
        advance(case_id)


def respond_by_passes(order_id: int) -> None:
    """The order's respond_by is now behind us (as if the unit waited too long)."""
    from hotline.clock import now
    from hotline.db import session_scope
    from models import WorkOrder
    with session_scope() as s:
        wo = s.get(WorkOrder, order_id)
        wo.respond_by = now() - timedelta(minutes=1)
        s.add(wo)


def orders(case_id: int) -> list:
    from hotline.db import read_scope
    from models import WorkOrder
    from sqlmodel import col, select
    with read_scope() as s:
        return list(s.exec(select(WorkOrder).where(WorkOrder.case_id == case_id).order_by(col(WorkOrder.id))))


def case(case_id: int):
    from hotline.db import read_scope
    from models import Case
    with read_scope() as s:
        return s.get(Case, case_id)


def timeline(case_id: int) -> list:
    from hotline.db import read_scope
    from models import TimelineEntry
    from sqlmodel import col, select
    with read_scope() as s:
        return list(s.exec(select(TimelineEntry).where(TimelineEntry.case_id == case_id)
                           .order_by(col(TimelineEntry.id))))


def entry(case_id: int, kind: str):
    [found] = [e for e in timeline(case_id) if e.kind == kind]
    return found


def escalations(case_id: int) -> list[str]:
    from hotline.db import read_scope
    from models import Escalation
    from sqlmodel import select
    with read_scope() as s:
        return [e.trigger for e in s.exec(select(Escalation).where(Escalation.case_id == case_id))]


def this_month() -> str:
    from hotline.clock import local, now
    return local(now()).format("YYYY-MM")


def rates(level: str) -> dict[str, dict]:
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        return {r["unit"]: r for r in rates_for_month(s, this_month(), level)}


# ---------------------------------------------------------------- 响应: first contact, not acceptance

def test_accepting_alone_is_not_a_response(district):
    late = submit()
    [wo] = orders(late)
    assert wo.unit == "c1"
    act(wo.id, "accept")  # 签收 well within respond_by ...
    assert orders(late)[0].responded_at is None  # ... is not a contact with the citizen
    respond_by_passes(wo.id)
    act(wo.id, "contacted")
    act(wo.id, "complete", resolved=True)
    follow_up(late, resolved=True, satisfaction="satisfied")
    assert case(late).status == "closed" and case(late).responded_in_time is False

    on_time = submit()  # the same, but the unit contacted the citizen before its respond_by
    [wo] = orders(on_time)
    act(wo.id, "accept")
    act(wo.id, "contacted")
    act(wo.id, "complete", resolved=True)
    follow_up(on_time, resolved=True, satisfaction="satisfied")
    assert case(on_time).responded_in_time is True
    # c1: 2 cases, 1 responded in time -> 0.5
    assert (rates("community")["c1"]["cases"], rates("community")["c1"]["response_rate"]) == (2, 0.5)


# ---------------------------------------------------------------- 退单: each unit on its own order

def test_a_justified_reject_charges_neither_unit_for_the_other(district):
    bounced = submit()
    first = orders(bounced)[0]
    assert (first.unit, first.reason) == ("c1", "dispatch")
    act(first.id, "reject", reason="不属于社区职责")  # 退单 without any contact: re-routed to the street
    second = orders(bounced)[1]
    assert (second.unit, second.reason, case(bounced).lead_unit) == ("st_a", "reject", "st_a")
    handle(second.id)  # the street contacts the citizen within its own order's respond_by
    follow_up(bounced, resolved=True, satisfaction="satisfied")
    assert case(bounced).responded_in_time is True  # not charged for c1's order, which never had a contact

    late = submit()  # bounced as well, but the street itself answers after its own respond_by
    act(orders(late)[0].id, "reject", reason="不属于社区职责")
    second = orders(late)[1]
    respond_by_passes(second.id)
    handle(second.id)
    follow_up(late, resolved=True, satisfaction="satisfied")
    assert case(late).responded_in_time is False

    # the street: both cases, response 1/2; the community returned both (justified 退单): in no count of it
    st_a, c1 = rates("street")["st_a"], rates("community")["c1"]
    assert (st_a["cases"], st_a["responded"], st_a["response_rate"]) == (2, 1, 0.5)
    assert (c1["cases"], c1["response_rate"], c1["score"], c1["rank"]) == (0, None, None, None)


def test_response_is_measured_on_the_units_own_first_lead_order():
    """The rule of evaluate_and_close on plain orders: a 退单 that came back (改派 to the same unit) is not
    justified — the unit's own first order is the one it returned; a 重办 order is not its first."""
    from datetime import datetime, timezone

    from models import WorkOrder
    from services.cases import _responded_in_time
    t = datetime(2026, 11, 10, 2, 0, tzinfo=timezone.utc)

    def order(unit, responded_after_minutes=None, respond_within=60, lapsed=False):
        return WorkOrder(case_id=1, unit=unit, respond_by=t + timedelta(minutes=respond_within), due_at=t,
                         responded_at=None if responded_after_minutes is None else
                         t + timedelta(minutes=responded_after_minutes), respond_lapsed=lapsed)

    returned_then_back = [order("c1"), order("st_a", 10), order("c1", 5)]
    assert _responded_in_time(returned_then_back, "c1") is False
    assert _responded_in_time(returned_then_back, "st_a") is True
    reopened = [order("st_a", 30), order("st_a", 500)]  # the 重办 order, late, does not replace the first response
    assert _responded_in_time(reopened, "st_a") is True
    assert _responded_in_time([order("st_a", 30, lapsed=True)], "st_a") is False  # a lapsed deadline never counts
    assert _responded_in_time([order("st_a", 61)], "st_a") is False
    assert _responded_in_time([], "st_a") is False and _responded_in_time([order("st_a", 1)], None) is False


# ---------------------------------------------------------------- a failed follow-up: 重办 or escalation

def test_first_failed_follow_up_reopens_by_default(district):
    case_id = submit()
    handle(orders(case_id)[0].id)
    follow_up(case_id, resolved=False, satisfaction="unsatisfied")
    c, wos = case(case_id), orders(case_id)
    assert (c.status, c.reopen_count, len(wos), wos[1].unit, wos[1].reason) == ("dispatched", 1, 2, "c1", "reopen")
    assert escalations(case_id) == []
    handle(wos[1].id)
    follow_up(case_id, resolved=True, satisfaction="unsatisfied")  # the second failure escalates and closes
    assert case(case_id).status == "closed" and escalations(case_id) == ["unsatisfied_twice"]


def test_first_failed_follow_up_escalates_at_once_by_policy(district):
    sla = yaml.safe_load((district / "sla.yaml").read_text(encoding="utf-8"))
    sla["follow_up"]["first_failure"] = "escalate"
    (district / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")
    case_id = submit()
    handle(orders(case_id)[0].id)
    follow_up(case_id, resolved=False, satisfaction="unsatisfied")
    c = case(case_id)
    assert (c.status, c.reopen_count, c.follow_up_outcome, c.satisfaction, c.resolved) == (
        "closed", 0, "answered", "unsatisfied", False)
    assert len(orders(case_id)) == 1 and escalations(case_id) == ["unsatisfied"]  # no 重办: supervisors take it
    assert rates("community")["c1"]["satisfaction_rate"] == 0.0


def test_first_failure_policy_is_validated(district):
    from services import policies
    assert policies.sla_policy().follow_up.first_failure == "reopen"  # the shipped file
    sla = yaml.safe_load((district / "sla.yaml").read_text(encoding="utf-8"))
    sla["follow_up"]["first_failure"] = "ignore"
    (district / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")
    assert policies.sla_policy().follow_up.first_failure == "reopen"  # the last good version stays in force
    with policies.strict(), pytest.raises(policies.PolicyError, match=r"sla\.yaml: follow_up\.first_failure"):
        policies.sla_policy()


# ---------------------------------------------------------------- anonymous: the unit's report, flagged

def test_anonymous_request_skips_the_call_and_is_evaluated_on_the_units_report(district):
    case_id = submit(anonymous=True)
    wo = orders(case_id)[0]
    handle(wo.id, resolved=False)  # the unit reports it could not resolve it
    kinds = [e.kind for e in timeline(case_id)]
    assert "follow_up.skipped" in kinds and "follow_up.requested" not in kinds
    c = case(case_id)
    assert (c.status, c.follow_up_outcome, c.resolved, c.satisfaction, c.follow_up_attempts) == (
        "closed", "skipped_anonymous", False, None, 0)
    closed = entry(case_id, "closed").data
    assert (closed["follow_up"], closed["resolved"], closed["resolved_from"]) == ("skipped_anonymous", False,
                                                                                  "unit_report")
    c1 = rates("community")["c1"]  # in the resolution rate on the unit's word, not in the satisfaction rate
    assert (c1["cases"], c1["resolution_rate"], c1["satisfaction_answers"], c1["satisfaction_rate"]) == (
        1, 0.0, 0, None)


# ---------------------------------------------------------------- a 重办 the citizen could not be reached for

def test_reopened_then_not_reached_keeps_the_citizens_earlier_answer(district):
    reopened = submit()
    handle(orders(reopened)[0].id)
    follow_up(reopened, resolved=False, satisfaction="unsatisfied")
    handle(orders(reopened)[1].id, resolved=True)  # the 重办: the unit reports it resolved
    miss_calls(reopened)
    c = case(reopened)
    assert (c.status, c.follow_up_outcome, c.satisfaction, c.resolved) == (
        "closed", "not_reached", "unsatisfied", False)  # the citizen's word stands, not the unit's report
    assert entry(reopened, "follow_up.not_reached").data == {"earlier_answer": "unsatisfied",
                                                             "earlier_resolved": False}
    assert entry(reopened, "closed").data["resolved_from"] == "citizen"

    never = submit()  # a first round not reached: the unit's report, no satisfaction
    handle(orders(never)[0].id, resolved=True)
    miss_calls(never)
    c = case(never)
    assert (c.follow_up_outcome, c.satisfaction, c.resolved) == ("not_reached", None, True)
    assert entry(never, "closed").data["resolved_from"] == "unit_report"

    # c1: resolved 0 + 1 = 1/2; satisfaction: only the reopened case's answer (unsatisfied = 0) -> 0/1
    c1 = rates("community")["c1"]
    assert (c1["cases"], c1["resolution_rate"], c1["satisfaction_answers"], c1["satisfaction_rate"]) == (
        2, 0.5, 1, 0.0)


# ---------------------------------------------------------------- reproducible from the timeline alone

def test_rates_rebuilt_from_the_timeline_equal_rates_for_month(district):
    from hotline.clock import local, now
    from hotline.db import read_scope, session_scope
    from models import Case, Unit
    from services import imports, whistles
    from services.evaluation import LEVELS, rates_for_month, rates_from_timeline
    from sqlmodel import select

    satisfied = submit()
    handle(orders(satisfied)[0].id)
    follow_up(satisfied, resolved=True, satisfaction="basically_satisfied")
    bounced = submit()
    act(orders(bounced)[0].id, "reject", reason="不属于社区职责")
    handle(orders(bounced)[1].id)
    follow_up(bounced, resolved=True, satisfaction="satisfied")
    anonymous = submit(anonymous=True)
    handle(orders(anonymous)[0].id, resolved=False)
    reopened = submit()
    handle(orders(reopened)[0].id)
    follow_up(reopened, resolved=False, satisfaction="unsatisfied")
    handle(orders(reopened)[1].id)
    miss_calls(reopened)
    enquiry = submit(category="enquiry")  # 咨询: excluded by the shipped evaluation policy
    handle(orders(enquiry)[0].id, resolved=False)
    miss_calls(enquiry)
    sewer = submit(category="sewer_blockage")  # led by the department, which the street summons and rates
    with session_scope() as s:
        whistle = whistles.blow(session=s, blower=s.get(Unit, "st_a"), case_id=sewer, units=["dept_w"],
                                kind="daily", note=None)
        whistle_id = whistle.id
    with session_scope() as s:
        whistles.report(session=s, unit=s.get(Unit, "dept_w"), whistle_id=whistle_id, note="到场")
    with session_scope() as s:
        whistles.rate(session=s, blower=s.get(Unit, "st_a"), whistle_id=whistle_id, ratings=[{"unit": "dept_w",
                                                                                               "score": 2}])
    with session_scope() as s:  # rated again: the later rating replaces the earlier one, in both records
        whistles.rate(session=s, blower=s.get(Unit, "st_a"), whistle_id=whistle_id, ratings=[{"unit": "dept_w",
                                                                                               "score": 4}])
    respond_by_passes(orders(sewer)[0].id)
    handle(orders(sewer)[0].id)
    follow_up(sewer, resolved=True, satisfaction="satisfied")
    closed_now = local(now())
    result = imports.import_rows([(2, {
        "source_ref": "IMP-1", "reported_at": closed_now.subtract(hours=2).isoformat(),
        "closed_at": closed_now.isoformat(), "category": "noise", "lead_unit": "st_a", "community": "c1",
        "responded_in_time": "否", "resolved": "是", "satisfaction": "satisfied"})], session_scope)
    assert result.imported == 1

    month = this_month()
    closed = entry(bounced, "closed").data
    assert {k: closed[k] for k in ("lead_unit", "lead_level", "category", "responded_in_time", "resolved",
                                   "resolved_from", "satisfaction", "follow_up")} == {
        "lead_unit": "st_a", "lead_level": "street", "category": "street_lights", "responded_in_time": True,
        "resolved": True, "resolved_from": "citizen", "satisfaction": "satisfied", "follow_up": "answered"}
    with read_scope() as s:
        expected = {level: rates_for_month(s, month, level) for level in LEVELS}
        rebuilt = {level: rates_from_timeline(s, month, level) for level in LEVELS}
    assert rebuilt == expected
    # not trivially equal: every level has data, the enquiry is out, the whistle blend is in
    by_unit = {r["unit"]: r for rows in expected.values() for r in rows}
    assert (by_unit["c1"]["cases"], by_unit["st_a"]["cases"], by_unit["dept_w"]["cases"]) == (3, 2, 1)
    assert (by_unit["dept_w"]["whistle_ratings"], by_unit["dept_w"]["whistle_score"]) == (1, 0.75)

    # the rebuild reads the timeline, not the cases: blank the cases' evaluation fields and it still answers
    with session_scope() as s:
        for c in s.exec(select(Case)):
            c.lead_unit, c.responded_in_time, c.resolved, c.satisfaction = None, None, None, None
            s.add(c)
    with read_scope() as s:
        assert all(r["cases"] == 0 for r in rates_for_month(s, month, "community"))
        assert rates_from_timeline(s, month, "community") == expected["community"]
