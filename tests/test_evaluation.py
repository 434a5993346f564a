"""考评: the three rates, the score and the ranking (docs/evaluation.md) on a month built by hand in a temporary
SQLite DB, the pure core on plain rows, the policy loader, and GET /api/metrics/rates through TestClient."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN

SH = ZoneInfo("Asia/Shanghai")
_ref = itertools.count(1)


def at(*args) -> datetime:
    """A local (Asia/Shanghai) time."""
    return datetime(*args, tzinfo=SH)


def add_unit(session, code: str, level: str) -> None:
    from models import Unit
    session.add(Unit(code=code, name=f"name of {code}", level=level, token_hash=f"h-{code}", webhook_secret="s"))


def add_case(session, unit: str | None, closed_local: datetime, *, responded=True, resolved=True,
             satisfaction: str | None = "satisfied", outcome="answered", anonymous=False, category="street_lights"):
    from models import Case, CaseStatus
    case = Case(source="hotline", source_ref=f"ev-{next(_ref)}", description="d", category=category,
                reported_at=closed_local - timedelta(days=2), status=CaseStatus.closed, lead_unit=unit,
                owner_unit=unit, anonymous=anonymous, responded_in_time=responded, completed_in_time=responded,
                resolved=resolved, satisfaction=satisfaction, follow_up_outcome=outcome, closed_at=closed_local)
    session.add(case)
    session.flush()
    return case


def add_rating(session, case, unit: str, score: int, whistled_local: datetime) -> None:
    from models import Summons, Whistle
    whistle = Whistle(case_id=case.id, blower="st_a", kind="daily", created_at=whistled_local)
    session.add(whistle)
    session.flush()
    session.add(Summons(whistle_id=whistle.id, unit=unit, report_by=whistled_local + timedelta(hours=1),
                        reported_at=whistled_local + timedelta(minutes=10), score=score))


@pytest.fixture
def november(db):
    """The constructed month: 2026-11 in Asia/Shanghai."""
    from hotline.db import session_scope
    with session_scope() as s:
        for code in ("st_a", "st_b", "st_c", "st_d", "st_e", "st_f", "st_g"):
            add_unit(s, code, "street")
        add_unit(s, "comm_x", "community")
        add_unit(s, "dept_w", "department")
        add_unit(s, "dept_v", "department")
        s.flush()
        mid = at(2026, 11, 15, 10, 0)
        # st_a: four cases count, three do not
        add_case(s, "st_a", at(2026, 11, 1, 0, 30))  # 1. 00:30 local = Oct 31 16:30 UTC: still November
        add_case(s, "st_a", mid, satisfaction="basically_satisfied")  # 2. counts 0.8
        add_case(s, "st_a", mid, responded=False, resolved=True, satisfaction=None, outcome="not_reached")  # 3.
        add_case(s, "st_a", mid, resolved=False, satisfaction=None, outcome="skipped_anonymous", anonymous=True)  # 4.
        add_case(s, "st_a", mid, responded=False, resolved=None, satisfaction=None,
                 outcome="closed_by_supervisor")  # excluded: closed by a supervisor
        add_case(s, "st_a", at(2026, 10, 31, 23, 30), responded=False, resolved=False,
                 satisfaction="unsatisfied")  # excluded: previous month (Oct 31 23:30 local)
        add_case(s, None, mid)  # closed without a lead unit: nobody's case
        # st_b, st_d, st_f: perfect cases (score 100): a tie
        add_case(s, "st_b", mid)
        add_case(s, "st_d", mid)
        add_case(s, "st_d", mid)
        add_case(s, "st_f", mid)
        # st_e: two not-reached cases, no satisfaction answer at all
        add_case(s, "st_e", mid, responded=True, satisfaction=None, outcome="not_reached")
        add_case(s, "st_e", mid, responded=False, satisfaction=None, outcome="not_reached")
        # st_c: only a case closed on Dec 1 00:10 local (= Nov 30 16:10 UTC): next month -> zero cases
        add_case(s, "st_c", at(2026, 12, 1, 0, 10))
        # st_g: nothing at all
        # comm_x (community level): responded, not resolved, unsatisfied
        add_case(s, "comm_x", mid, resolved=False, satisfaction="unsatisfied")
        # dept_w: two cases and whistle ratings 5 and 3 in November, 1 in October (not counted)
        w1 = add_case(s, "dept_w", mid)
        add_case(s, "dept_w", mid, satisfaction="basically_satisfied")
        add_rating(s, w1, "dept_w", 5, at(2026, 11, 3, 9, 0))
        add_rating(s, w1, "dept_w", 3, at(2026, 11, 20, 9, 0))
        add_rating(s, w1, "dept_w", 1, at(2026, 10, 20, 9, 0))
        # dept_v: no case, but a rating: still zero cases, no score, no rank
        add_rating(s, w1, "dept_v", 4, at(2026, 11, 4, 9, 0))
    return db


def _by_unit(rows):
    return {r["unit"]: r for r in rows}


def test_streets_rates_score_and_rank(november):
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        rows = rates_for_month(s, "2026-11", "street")
    u = _by_unit(rows)
    assert set(u) == {"st_a", "st_b", "st_c", "st_d", "st_e", "st_f", "st_g"}  # streets only

    # st_a: 4 cases (1-4; the supervisor-closed and the October case are out)
    #   responded: 1, 2, 4 -> 3/4 = 0.75;  resolved: 1, 2, 3 (unit's report, not reached) -> 3/4 = 0.75
    #   satisfaction: only answered follow-ups: 1 (satisfied = 1) and 2 (basically = 0.8) -> 1.8/2 = 0.9
    #   (3 is not reached, 4 anonymous: both out of the satisfaction denominator)
    #   score = 100 * (0.2*0.75 + 0.4*0.75 + 0.4*0.9) = 100 * (0.15 + 0.30 + 0.36) = 81.00
    a = u["st_a"]
    assert (a["cases"], a["responded"], a["resolved"], a["satisfaction_answers"]) == (4, 3, 3, 2)
    assert (a["response_rate"], a["resolution_rate"], a["satisfaction_rate"]) == (0.75, 0.75, 0.9)
    assert a["score"] == 81.0

    # st_e: 2 cases, responded 1/2 = 0.5, resolved 2/2 = 1, no answers -> satisfaction null; the weights of
    #   the other two are renormalised: 100 * (0.2*0.5 + 0.4*1) / (0.2 + 0.4) = 100 * 0.5/0.6 = 83.33
    e = u["st_e"]
    assert (e["cases"], e["response_rate"], e["resolution_rate"], e["satisfaction_rate"]) == (2, 0.5, 1.0, None)
    assert e["score"] == 83.33

    # st_b, st_d, st_f: 100 each. Ties: more cases first (st_d: 2), then code (st_b before st_f)
    assert [(r["unit"], r["score"], r["rank"]) for r in rows[:5]] == [
        ("st_d", 100.0, 1), ("st_b", 100.0, 2), ("st_f", 100.0, 3), ("st_e", 83.33, 4), ("st_a", 81.0, 5)]

    # 零诉求: st_c (its only case closed in December) and st_g: listed last, by code, nulls and no rank
    assert [r["unit"] for r in rows[5:]] == ["st_c", "st_g"]
    for code in ("st_c", "st_g"):
        assert u[code]["cases"] == 0
        assert u[code]["rank"] is None and u[code]["score"] is None
        assert u[code]["response_rate"] is None and u[code]["resolution_rate"] is None
        assert u[code]["satisfaction_rate"] is None


def test_previous_and_next_month_see_the_boundary_cases(november):
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        october, december = _by_unit(rates_for_month(s, "2026-10", "street")), \
            _by_unit(rates_for_month(s, "2026-12", "street"))
    # October: only st_a's Oct 31 23:30 case: not responded, not resolved, unsatisfied -> 0, 0, 0 -> score 0
    assert october["st_a"]["cases"] == 1
    assert (october["st_a"]["response_rate"], october["st_a"]["resolution_rate"],
            october["st_a"]["satisfaction_rate"], october["st_a"]["score"], october["st_a"]["rank"]) == (
        0.0, 0.0, 0.0, 0.0, 1)
    assert october["st_b"]["cases"] == 0 and october["st_b"]["rank"] is None
    # December: st_c's Dec 1 00:10 case, perfect -> 100, rank 1; st_a has none
    assert (december["st_c"]["cases"], december["st_c"]["score"], december["st_c"]["rank"]) == (1, 100.0, 1)
    assert december["st_a"]["cases"] == 0


def test_department_blends_the_whistle_rating(november):
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        u = _by_unit(rates_for_month(s, "2026-11", "department"))
    # dept_w: 2 cases, responded 2/2, resolved 2/2, satisfaction (1 + 0.8)/2 = 0.9
    #   three rates: 0.2*1 + 0.4*1 + 0.4*0.9 = 0.96
    #   whistle: November ratings 5 and 3 -> mean 4 -> (4 - 1)/4 = 0.75 (October's 1 does not count)
    #   score = 100 * ((1 - 0.1)*0.96 + 0.1*0.75) = 100 * (0.864 + 0.075) = 93.90
    w = u["dept_w"]
    assert (w["cases"], w["satisfaction_rate"], w["whistle_ratings"], w["whistle_score"]) == (2, 0.9, 2, 0.75)
    assert (w["score"], w["rank"]) == (93.9, 1)
    # dept_v: rated 4 -> (4-1)/4 = 0.75 but no case: no score, no rank
    v = u["dept_v"]
    assert (v["cases"], v["whistle_score"], v["score"], v["rank"]) == (0, 0.75, None, None)


def test_community_level(november):
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    with read_scope() as s:
        rows = rates_for_month(s, "2026-11", "community")
    # comm_x: responded 1, resolved 0, unsatisfied 0 -> 100 * 0.2*1 = 20.00; no whistle blend for communities
    assert [(r["unit"], r["cases"], r["response_rate"], r["resolution_rate"], r["satisfaction_rate"], r["score"],
             r["rank"]) for r in rows] == [("comm_x", 1, 1.0, 0.0, 0.0, 20.0, 1)]


def test_weights_come_from_the_policy_file(november):
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    (november / "evaluation.yaml").write_text(yaml.safe_dump({
        "weights": {"response": 0.5, "resolution": 0.5, "satisfaction": 0.0},
        "basically_satisfied_weight": 0.5, "whistle": {"weight": 0}}), encoding="utf-8")
    with read_scope() as s:
        u = _by_unit(rates_for_month(s, "2026-11", "street"))
    # st_a: satisfaction (1 + 0.5)/2 = 0.75; score = 100 * (0.5*0.75 + 0.5*0.75 + 0*0.75) = 75.00
    assert (u["st_a"]["satisfaction_rate"], u["st_a"]["score"]) == (0.75, 75.0)


def test_a_broken_policy_names_file_and_field(db):
    from services.evaluation import evaluation_policy
    from services.policies import PolicyError
    (db / "evaluation.yaml").write_text("weights: {response: 0.5, resolution: 0.4, satisfaction: 0.4}\n",
                                        encoding="utf-8")
    with pytest.raises(PolicyError, match=r"evaluation\.yaml: weights.*must be 1"):
        evaluation_policy()
    (db / "evaluation.yaml").unlink()
    assert evaluation_policy().weights.resolution == 0.4  # no file: the documented defaults


def test_pure_core_without_a_db():
    from services.evaluation import CaseRow, EvaluationPolicy, UnitRow, evaluate
    units = [UnitRow("s1", "一街", "street"), UnitRow("s2", "二街", "street"), UnitRow("d1", "局", "department")]
    t = at(2027, 1, 10, 12, 0)
    cases = [CaseRow("s1", t, responded_in_time=True, resolved=True, satisfaction="basically_satisfied",
                     follow_up_outcome="answered"),
             CaseRow("s1", t, category="other", responded_in_time=False, resolved=False,
                     satisfaction="unsatisfied", follow_up_outcome="answered"),
             CaseRow("s2", t, responded_in_time=False, resolved=True, satisfaction="satisfied",
                     follow_up_outcome="answered")]
    policy = EvaluationPolicy(excluded_categories=["other"])
    rows = evaluate("2027-01", "street", units, cases, [], policy)
    # s1 (the "other" case excluded): 1, 1, 0.8 -> 100 * (0.2 + 0.4 + 0.32) = 92.00
    # s2: 0, 1, 1 -> 100 * (0 + 0.4 + 0.4) = 80.00
    assert [(r["unit"], r["cases"], r["score"], r["rank"]) for r in rows] == [("s1", 1, 92.0, 1), ("s2", 1, 80.0, 2)]
    # without the exclusion s1 has 2 cases: 0.5, 0.5, (0.8 + 0)/2 = 0.4 -> 100*(0.1 + 0.2 + 0.16) = 46.00
    rows = evaluate("2027-01", "street", units, cases, [], EvaluationPolicy())
    assert [(r["unit"], r["score"]) for r in rows] == [("s2", 80.0), ("s1", 46.0)]
    with pytest.raises(ValueError):
        evaluate("2027-1", "street", units, cases, [], policy)
    with pytest.raises(ValueError):
        evaluate("2027-01", "district", units, cases, [], policy)


def test_route(november):
    from fastapi.testclient import TestClient

    from api.main import create_app
    with TestClient(create_app()) as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = client.get("/api/metrics/rates", params={"month": "2026-11", "level": "street"}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["month"], body["level"]) == ("2026-11", "street")
        a = _by_unit(body["units"])["st_a"]
        assert (a["response_rate"], a["resolution_rate"], a["satisfaction_rate"], a["score"], a["rank"],
                a["cases"]) == (0.75, 0.75, 0.9, 81.0, 5, 4)
        assert [u["unit"] for u in body["units"]][:3] == ["st_d", "st_b", "st_f"]

        r = client.get("/api/metrics/rates", params={"month": "2026-11", "level": "department"}, headers=auth)
        assert r.status_code == 200 and _by_unit(r.json()["units"])["dept_w"]["score"] == 93.9

        for bad in ("2026-13", "2026-1", "november", "2026-11-01"):
            r = client.get("/api/metrics/rates", params={"month": bad, "level": "street"}, headers=auth)
            assert r.status_code == 422, (bad, r.text)
            assert [e["field"] for e in r.json()["detail"]] == ["month"]
        r = client.get("/api/metrics/rates", params={"month": "2026-11", "level": "district"}, headers=auth)
        assert r.status_code == 422 and [e["field"] for e in r.json()["detail"]] == ["level"]

        assert client.get("/api/metrics/rates", params={"month": "2026-11"}).status_code == 401
        r = client.get("/api/metrics/rates", params={"month": "2026-11"},
                       headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401

        (november / "evaluation.yaml").write_text("basically_satisfied_weight: 2\n", encoding="utf-8")
        r = client.get("/api/metrics/rates", params={"month": "2026-11"}, headers=auth)
        assert r.status_code == 503 and "evaluation.yaml: basically_satisfied_weight" in r.json()["detail"]


def test_weights_on_a_rate_without_data_give_no_score_not_a_crash(november):
    """Weights 0/0/1 (a valid policy): a unit with cases but no satisfaction answer has nothing weighted to score —
    no score and no rank (not 0, not ZeroDivisionError); the API, the report and its Markdown still answer."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from hotline.db import read_scope
    from services.evaluation import rates_for_month
    from services.reports import build_report, rates_markdown, render_html
    (november / "evaluation.yaml").write_text(yaml.safe_dump({
        "weights": {"response": 0, "resolution": 0, "satisfaction": 1}, "whistle": {"weight": 0}}), encoding="utf-8")
    with read_scope() as s:
        rows = rates_for_month(s, "2026-11", "street")
        report = build_report(s, "2026-11")
    u = _by_unit(rows)
    # st_e: 2 cases, both not reached: response 1/2 and resolution 2/2 have data but weight 0; satisfaction has
    # weight 1 but no answer (empty denominator: null, not 0) -> no score, no rank
    e = u["st_e"]
    assert (e["cases"], e["response_rate"], e["resolution_rate"], e["satisfaction_answers"]) == (2, 0.5, 1.0, 0)
    assert (e["satisfaction_rate"], e["score"], e["rank"]) == (None, None, None)
    # st_a: satisfaction (1 + 0.8)/2 = 0.9 -> 100 * 1 * 0.9 = 90.00; the perfect streets 100
    assert [(r["unit"], r["score"], r["rank"]) for r in rows] == [
        ("st_d", 100.0, 1), ("st_b", 100.0, 2), ("st_f", 100.0, 3), ("st_a", 90.0, 4),
        ("st_c", None, None), ("st_e", None, None), ("st_g", None, None)]  # without a score: by code
    assert "name of st_e" in render_html(report)
    assert "| — | name of st_e (st_e) | 2 | 50.0% | 100.0% | — | — |" in rates_markdown(report)
    with TestClient(create_app()) as client:
        r = client.get("/api/metrics/rates", params={"month": "2026-11", "level": "street"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and _by_unit(r.json()["units"])["st_e"]["score"] is None


def test_enquiries_are_excluded_by_the_shipped_policy(november):
    """咨询 (enquiry) is a category and the shipped evaluation.yaml leaves it out of every count."""
    from hotline.db import read_scope, session_scope
    from services import policies
    from services.evaluation import evaluation_policy, rates_for_month
    assert policies.categories()["enquiry"] == "咨询"
    assert evaluation_policy().excluded_categories == ["enquiry"]
    with session_scope() as s:  # a bad enquiry on the perfect street st_b: it must not move st_b's numbers
        add_case(s, "st_b", at(2026, 11, 20, 9, 0), responded=False, resolved=False, satisfaction="unsatisfied",
                 category="enquiry")
        add_case(s, "st_g", at(2026, 11, 20, 9, 0), category="enquiry")  # st_g: still 零诉求
    with read_scope() as s:
        u = _by_unit(rates_for_month(s, "2026-11", "street"))
    assert (u["st_b"]["cases"], u["st_b"]["response_rate"], u["st_b"]["satisfaction_rate"], u["st_b"]["score"]) == (
        1, 1.0, 1.0, 100.0)
    assert (u["st_g"]["cases"], u["st_g"]["rank"]) == (0, None)
    # without the exclusion the enquiry counts: st_b 2 cases, 0.5, 0.5, 0.5 -> 50.00
    (november / "evaluation.yaml").write_text("excluded_categories: []\n", encoding="utf-8")
    with read_scope() as s:
        u = _by_unit(rates_for_month(s, "2026-11", "street"))
    assert (u["st_b"]["cases"], u["st_b"]["score"]) == (2, 50.0)


def test_an_unknown_excluded_category_is_a_policy_error(db):
    from services.evaluation import evaluation_policy
    from services.policies import PolicyError
    (db / "evaluation.yaml").write_text("excluded_categories: [enquiries]\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"evaluation\.yaml: excluded_categories: unknown categories \['enquiries'\]"):
        evaluation_policy()
