"""月度报告: the monthly report (HTML with SVG charts, CSV files), 零诉求/低诉求社区 and 每月一题 candidates
(docs/evaluation.md) on months built by hand in a temporary SQLite DB; the CLI through typer's CliRunner and the
two API answers through TestClient."""
from __future__ import annotations

import csv
import itertools
import re
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.conftest import FAST_ADMIN_TOKEN as ADMIN

SH = ZoneInfo("Asia/Shanghai")
CITIZEN_NAME, CITIZEN_PHONE = "陈阿姨", "13912345678"
_ref = itertools.count(1)
CSV_FILES = ("rates_street.csv", "rates_department.csv", "rates_community.csv", "rates_utility.csv", "trend.csv",
             "hot_spots.csv", "communities.csv", "topics.csv")


def at(*args) -> datetime:
    """A local (Asia/Shanghai) time."""
    return datetime(*args, tzinfo=SH)


def add_unit(session, code: str, name: str, level: str, parent: str | None = None) -> None:
    from models import Unit
    session.add(Unit(code=code, name=name, level=level, parent=parent, token_hash=f"h-{code}", webhook_secret="s"))
    session.flush()


def reported(session, reported_local: datetime, *, street=None, community=None, category="noise",
             citizen_key: str | None = None):
    """An open case reported at a local time (counts for communities and topics, not for the rates)."""
    from models import Case, CaseStatus
    n = next(_ref)
    case = Case(source="hotline", source_ref=f"rp-{n}", number=f"2026{n:06d}", description="楼下噪声",
                category=category, reported_at=reported_local, street=street, community=community,
                status=CaseStatus.handling, citizen_name=CITIZEN_NAME, citizen_phone=CITIZEN_PHONE,
                citizen_key=citizen_key)
    session.add(case)
    session.flush()
    return case


def closed(session, unit: str, closed_local: datetime, *, responded=True, resolved=True,
           satisfaction: str | None = "satisfied", outcome="answered"):
    """A case closed at a local time, led by `unit` (counts for the rates). It has no street or community, so it
    stays out of the community counts and the topics."""
    from models import Case, CaseStatus
    n = next(_ref)
    case = Case(source="hotline", source_ref=f"cl-{n}", number=f"2026{n:06d}", description="路灯太亮",
                category="street_lights", reported_at=closed_local - timedelta(days=2), status=CaseStatus.closed,
                lead_unit=unit, owner_unit=unit, responded_in_time=responded, completed_in_time=responded,
                resolved=resolved, satisfaction=satisfaction, follow_up_outcome=outcome, closed_at=closed_local,
                citizen_name=CITIZEN_NAME, citizen_phone=CITIZEN_PHONE)
    session.add(case)
    session.flush()
    return case


def registry(s) -> None:
    add_unit(s, "hd", "海淀区", "district")
    add_unit(s, "st_a", "学院路街道", "street", "hd")
    add_unit(s, "st_b", "中关村街道", "street", "hd")
    add_unit(s, "st_c", "花园路街道", "street", "hd")
    add_unit(s, "c_a1", "小南庄社区", "community", "st_a")
    add_unit(s, "c_a2", "六道口社区", "community", "st_a")
    add_unit(s, "c_a3", "石板房社区", "community", "st_a")
    add_unit(s, "c_b1", "科源社区", "community", "st_b")
    add_unit(s, "dept_w", "区城管委", "department", "hd")
    add_unit(s, "util_x", "自来水公司", "utility", "hd")


@pytest.fixture
def district(db):
    """The constructed district and its months (2026-09 .. 2026-11, Asia/Shanghai)."""
    from hotline.db import session_scope
    with session_scope() as s:
        registry(s)
        mid = at(2026, 11, 15, 10, 0)
        # -- the rates of November (closed cases) --
        closed(s, "st_a", mid)                                                    # 1, 1, satisfied 1
        closed(s, "st_a", mid, responded=False, satisfaction="basically_satisfied")  # 0, 1, 0.8
        closed(s, "st_b", mid, resolved=False, satisfaction="unsatisfied")        # 1, 0, 0
        closed(s, "c_a1", mid)                                                    # community level
        closed(s, "dept_w", mid)                                                  # department level
        closed(s, "hd", mid)                                                      # the district itself led it
        # -- earlier months, for the trend --
        closed(s, "st_a", at(2026, 10, 10, 9, 0))                                 # October: perfect
        closed(s, "st_b", at(2026, 9, 10, 9, 0), satisfaction=None, outcome="not_reached")  # September
        # -- reported cases (open): street st_a, 每月一题 by hand --
        for when, n in ((at(2026, 9, 5, 9, 0), 1), (at(2026, 10, 5, 9, 0), 2)):
            for _ in range(n):
                reported(s, when, street="st_a", community="c_a1", category="noise")
        # November: four noise cases in c_a1 from three citizens (keys), linked as a 热点 at collection
        noise = [reported(s, at(2026, 11, 5, 9 + i, 0), street="st_a", community="c_a1", category="noise",
                          citizen_key=key) for i, key in enumerate(("k1", "k2", "k1", "k3"))]
        from models import CaseLink
        from services.repeats import HOT_SPOT
        s.add(CaseLink(case_id=noise[-1].id, related_case_id=noise[0].id, kind=HOT_SPOT))
        reported(s, at(2026, 11, 6, 9, 0), street="st_a", community="c_a2", category="noise")  # 5th Nov noise
        for _ in range(3):
            reported(s, at(2026, 11, 7, 9, 0), street="st_a", community="c_a1", category="sanitation")
        for when, n in ((at(2026, 9, 8, 9, 0), 2), (at(2026, 10, 8, 9, 0), 4), (at(2026, 11, 8, 9, 0), 1)):
            for _ in range(n):
                reported(s, when, street="st_a", community="c_a1", category="illegal_parking")
        # boundaries: Oct 31 23:30 local is October, Dec 1 00:10 local is December (c_a3 stays at zero)
        reported(s, at(2026, 10, 31, 23, 30), street="st_a", community="c_a3", category="greening")
        reported(s, at(2026, 12, 1, 0, 10), street="st_a", community="c_a3", category="greening")
        # street st_b: Nov 1 00:30 local (= Oct 31 16:30 UTC) and Nov 30 23:50 local: both November
        reported(s, at(2026, 11, 1, 0, 30), street="st_b", community="c_b1", category="gas")
        reported(s, at(2026, 11, 30, 23, 50), street="st_b", community="c_b1", category="gas")
    return db


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    assert path.read_bytes().startswith(b"\xef\xbb\xbf"), f"{path.name} has no UTF-8 byte-order mark"
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def cell(value) -> str:
    return "" if value is None else str(value)


def build(month: str):
    from hotline.db import read_scope
    from services.reports import build_report
    with read_scope() as s:
        return build_report(s, month)


# ---------------------------------------------------------------- 零诉求/低诉求社区

def test_zero_and_low_request_communities(district):
    from hotline.db import read_scope
    from services.trends import communities_for_month
    with read_scope() as s:
        answer = communities_for_month(s, "2026-11")
    # November, by reported_at (local): c_a1: noise 4 + sanitation 3 + parking 1 = 8 -> normal
    #   c_a2: one noise case -> low (1 <= 2); c_a3: its cases are Oct 31 23:30 and Dec 1 00:10 local -> zero
    #   c_b1: Nov 1 00:30 and Nov 30 23:50 local -> 2 -> low (at the threshold 2)
    #   closed cases carry no community: not counted. Fewest first, then code.
    assert [(c["community"], c["cases"], c["status"], c["street"], c["street_name"])
            for c in answer["communities"]] == [
        ("c_a3", 0, "zero", "st_a", "学院路街道"), ("c_a2", 1, "low", "st_a", "学院路街道"),
        ("c_b1", 2, "low", "st_b", "中关村街道"), ("c_a1", 8, "normal", "st_a", "学院路街道")]
    assert (answer["zero"], answer["low"], answer["low_request_threshold"]) == (1, 2, 2)
    with read_scope() as s:
        october = {c["community"]: c["cases"] for c in communities_for_month(s, "2026-10")["communities"]}
    # October: c_a1 noise 2 + parking 4 = 6; c_a3 the Oct 31 23:30 case
    assert october == {"c_a1": 6, "c_a2": 0, "c_a3": 1, "c_b1": 0}


def test_low_request_threshold_comes_from_the_policy(district):
    from hotline.db import read_scope
    from services.trends import communities_for_month
    (district / "evaluation.yaml").write_text(yaml.safe_dump({"low_request_threshold": 1}), encoding="utf-8")
    with read_scope() as s:
        answer = communities_for_month(s, "2026-11")
    # threshold 1: c_b1 (2 cases) is normal now, c_a2 (1) still low
    assert {c["community"]: c["status"] for c in answer["communities"]} == {
        "c_a3": "zero", "c_a2": "low", "c_b1": "normal", "c_a1": "normal"}
    assert (answer["zero"], answer["low"]) == (1, 1)


# ---------------------------------------------------------------- 每月一题

def test_topic_candidates_per_street(district):
    from hotline.db import read_scope
    from services.trends import topics_for_month
    with read_scope() as s:
        answer = topics_for_month(s, "2026-11")
    assert answer["months"] == ["2026-11", "2026-10", "2026-09"] and answer["top"] == 3
    streets = {x["street"]: x for x in answer["streets"]}
    assert list(streets) == ["st_a", "st_b", "st_c"]
    a = streets["st_a"]
    # st_a   Sep Oct Nov
    #  noise   1   2   5  -> growth +3, ratio 5/2 = 2.5, active 3 months
    #  sanit.  0   0   3  -> growth +3, ratio null (new), active 1 month
    #  parking 2   4   1  -> growth -3 (not growing), active 3 months
    #  greening: only Oct 31 23:30 (October) and Dec 1 (December): no November case, not a candidate
    # growing: equal growth 3, the new category first: sanitation, noise
    assert [(t["category"], t["cases"], t["previous"], t["growth"], t["ratio"]) for t in a["growing"]] == [
        ("sanitation", 3, 0, 3, None), ("noise", 5, 2, 3, 2.5)]
    # recurring: months active, then cases: noise (3, 5), parking (3, 1), sanitation (1, 3)
    assert [(t["category"], t["months_active"], t["cases"]) for t in a["recurring"]] == [
        ("noise", 3, 5), ("illegal_parking", 3, 1), ("sanitation", 1, 3)]
    assert a["recurring"][0]["category_name"] == "噪声扰民" and a["cases"] == 9
    # st_b: gas 2 in November (both boundary cases), none before: new, +2
    b = streets["st_b"]
    assert [(t["category"], t["growth"], t["ratio"], t["months_active"]) for t in b["growing"]] == [
        ("gas", 2, None, 1)]
    assert [t["category"] for t in b["recurring"]] == ["gas"]
    assert streets["st_c"] == {"street": "st_c", "name": "花园路街道", "cases": 0, "growing": [], "recurring": []}


def test_topic_candidates_pure_core_cuts_to_top_n():
    from collections import Counter

    from services.trends import shift_month, topic_candidates
    assert (shift_month("2026-01", -1), shift_month("2026-12", 1), shift_month("2026-03", -14)) == (
        "2025-12", "2027-01", "2025-01")
    by_month = {"2027-01": Counter(a=4, b=4, c=3, d=1), "2026-12": Counter(a=1, b=2, d=5),
                "2026-11": Counter(b=1, c=1)}
    found = topic_candidates(by_month, "2027-01", 2)
    # growth: a +3 (x4), b +2 (x2), c +3 (new), d -4 -> c (new first among +3), a; cut to 2
    assert [t["category"] for t in found["growing"]] == ["c", "a"]
    # months active: b 3, a 2, c 2, d 2 -> b; then a (4 cases) before c (3) and d (1)
    assert [(t["category"], t["months_active"]) for t in found["recurring"]] == [("b", 3), ("a", 2)]


# ---------------------------------------------------------------- the report

def test_district_rates_include_every_lead_unit(district):
    from hotline.db import read_scope
    from services.evaluation import district_rates
    with read_scope() as s:
        d = district_rates(s, "2026-11")
    # six November cases (st_a 2, st_b 1, c_a1 1, dept_w 1, hd 1):
    #   responded 5/6 (st_a's second no), resolved 5/6 (st_b's no), satisfaction (1 + 0.8 + 0 + 1 + 1 + 1)/6 = 0.8
    assert (d["cases"], d["response_rate"], d["resolution_rate"], d["satisfaction_rate"]) == (
        6, 0.8333, 0.8333, 0.8)


def test_report_with_data_renders_charts_and_csv(district, tmp_path):
    from hotline.db import read_scope
    from services.evaluation import LEVELS, month_bounds, rates_for_month
    from services.repeats import hot_spots
    from services.reports import RATE_COLUMNS, TREND_COLUMNS, write_report

    report = build("2026-11")
    out = tmp_path / "out"
    paths = write_report(report, out)
    assert [p.name for p in paths] == ["report.html", *CSV_FILES]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not report.empty and 'id="no-data"' not in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")

    # bars: one group per street with cases (st_a, st_b); rates as labels; st_c (no case) has no bar
    bars = re.findall(r'<svg[^>]*class="chart bar-chart".*?</svg>', html, re.S)
    assert len(bars) == 1
    bar = bars[0]
    for title in ("学院路街道 响应率 50.0%", "学院路街道 解决率 100.0%", "学院路街道 满意率 90.0%",
                  "中关村街道 响应率 100.0%", "中关村街道 解决率 0.0%", "中关村街道 满意率 0.0%"):
        assert f"<title>{title}</title>" in bar, title
    assert "花园路街道" not in bar
    assert all(f">{name}</text>" in bar for name in ("响应率", "解决率", "满意率", "0%", "100%", "比率 (%)"))

    # lines: one chart per rate over 2026-06 .. 2026-11, 全区 and the streets with data, with a legend
    lines = re.findall(r'<svg[^>]*class="chart line-chart".*?</svg>', html, re.S)
    assert len(lines) == 3
    response, resolution, satisfaction = lines
    for chart in lines:
        assert all(f">2026-{m:02d}</text>" in chart for m in range(6, 12))
        assert all(f'data-label="{name}"' in chart for name in ("全区", "学院路街道", "中关村街道"))
        assert all(f'class="legend-label">{name}</text>' in chart for name in ("全区", "学院路街道", "中关村街道"))
    assert "<title>全区 2026-11 83.3%</title>" in response and "<title>全区 2026-09 100.0%</title>" in response
    assert "<title>全区 2026-11 83.3%</title>" in resolution
    # satisfaction: September has no answered follow-up -> no point; November 0.8
    assert "<title>全区 2026-11 80.0%</title>" in satisfaction
    assert "<title>全区 2026-09" not in satisfaction

    # the CSV numbers are rates_for_month's, row by row, for every level
    with read_scope() as s:
        for level in LEVELS:
            expected = rates_for_month(s, "2026-11", level)
            columns, rows = read_csv(out / f"rates_{level}.csv")
            assert columns == RATE_COLUMNS
            assert rows == [{c: cell(r[c]) for c in RATE_COLUMNS} for r in expected], level
        spots = hot_spots(s, *month_bounds("2026-11", "Asia/Shanghai"))
    street = {r["unit"]: r for r in read_csv(out / "rates_street.csv")[1]}
    assert (street["st_a"]["response_rate"], street["st_a"]["satisfaction_rate"], street["st_a"]["rank"]) == (
        "0.5", "0.9", "1")
    assert street["st_c"]["cases"] == "0" and street["st_c"]["rank"] == ""

    columns, trend = read_csv(out / "trend.csv")
    assert columns == TREND_COLUMNS
    assert [(r["month"], r["scope"], r["cases"], r["response_rate"], r["resolution_rate"], r["satisfaction_rate"])
            for r in trend] == [
        ("2026-09", "district", "1", "1.0", "1.0", ""), ("2026-09", "st_b", "1", "1.0", "1.0", ""),
        ("2026-10", "district", "1", "1.0", "1.0", "1.0"), ("2026-10", "st_a", "1", "1.0", "1.0", "1.0"),
        ("2026-11", "district", "6", "0.8333", "0.8333", "0.8"), ("2026-11", "st_a", "2", "0.5", "1.0", "0.9"),
        ("2026-11", "st_b", "1", "1.0", "0.0", "0.0")]

    # hot spots: the rows of services.repeats.hot_spots for the month, in its order
    _, hot = read_csv(out / "hot_spots.csv")
    assert [(r["category"], int(r["cases"]), int(r["citizens"]), r["case_numbers"]) for r in hot] == [
        (h.category, h.cases, h.citizens, " ".join(h.case_numbers)) for h in spots]
    # the one linked group: c_a1 noise, four cases of November from three citizens
    assert [(h.street, h.community, h.category, h.cases, h.citizens) for h in spots] == [
        ("st_a", "c_a1", "noise", 4, 3)]
    assert [(r["street_name"], r["community_name"], r["category_name"], r["first_at"], r["last_at"])
            for r in hot] == [("学院路街道", "小南庄社区", "噪声扰民", "2026-11-05 09:00", "2026-11-05 12:00")]
    table = re.search(r'<table class="hot-spots">.*?</table>', html, re.S).group(0)
    assert all(f"<span>{n}</span>" in table for n in spots[0].case_numbers)
    assert "小南庄社区" in table and ">4</td>" in table

    _, communities = read_csv(out / "communities.csv")
    assert [(r["community"], r["cases"], r["status"]) for r in communities] == [
        ("c_a3", "0", "zero"), ("c_a2", "1", "low"), ("c_b1", "2", "low"), ("c_a1", "8", "normal")]
    _, topics = read_csv(out / "topics.csv")
    assert [(r["street"], r["list"], r["position"], r["category"], r["growth"], r["ratio"]) for r in topics] == [
        ("st_a", "growing", "1", "sanitation", "3", ""), ("st_a", "growing", "2", "noise", "3", "2.5"),
        ("st_a", "recurring", "1", "noise", "3", "2.5"), ("st_a", "recurring", "2", "illegal_parking", "-3", "0.25"),
        ("st_a", "recurring", "3", "sanitation", "3", ""),
        ("st_b", "growing", "1", "gas", "2", ""), ("st_b", "recurring", "1", "gas", "2", "")]

    # the page: headings, tables and names; zero/low communities; topics; no citizen data anywhere
    for text in ("海淀区12345 接诉即办月度报告", "2026年11月", "各街道(乡镇)三率", "近6个月三率趋势", "重复诉求热点",
                 "零诉求 / 低诉求社区", "每月一题候选", "石板房社区", "六道口社区", "科源社区", "噪声扰民", "环境卫生"):
        assert text in html, text
    flagged = re.search(r'<table class="communities">.*?</table>', html, re.S).group(0)
    assert "石板房社区" in flagged and "小南庄社区" not in flagged  # a normal community is not listed
    for path in paths:
        content = path.read_text(encoding="utf-8-sig")
        assert CITIZEN_NAME not in content and CITIZEN_PHONE not in content, path.name


def test_labels_are_escaped(district, tmp_path, monkeypatch):
    from hotline.db import session_scope
    from services import repeats, reports
    from services.repeats import HotSpot
    with session_scope() as s:
        from models import Unit
        s.get(Unit, "st_b").name = '<img src=x onerror="alert(1)">'
    spot = HotSpot(street="st_b", community="c_b1", category="gas", cases=2, citizens=1,
                   case_numbers=["N-1", "N-2"], first_at=at(2026, 11, 1, 0, 30), last_at=at(2026, 11, 30, 23, 50))
    monkeypatch.setattr(repeats, "hot_spots", lambda session, start, end, policy=None: [spot])
    report = build("2026-11")
    html = reports.render_html(report)
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    # the stubbed hot spot, with local times, names and case numbers
    assert "<span>N-1</span>, <span>N-2</span>" in html
    assert "2026-11-01 00:30" in html and "2026-11-30 23:50" in html
    assert report.hot_spots[0]["community_name"] == "科源社区" and report.hot_spots[0]["category_name"] == "燃气"


def test_empty_month_on_an_empty_registry(db, tmp_path):
    from services.reports import write_report
    report = build("2026-11")
    assert report.empty
    paths = write_report(report, tmp_path / "out")
    html = paths[0].read_text(encoding="utf-8")
    assert 'id="no-data"' in html and "本月无数据" in html
    assert "<svg" not in html  # no broken, empty chart
    for name in CSV_FILES:
        columns, rows = read_csv(tmp_path / "out" / name)
        assert columns and rows == [], name


def test_empty_month_with_a_registry(district, tmp_path):
    from services.reports import write_report
    report = build("2025-01")  # nothing reported, nothing closed in this month nor the five before
    assert report.empty
    write_report(report, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="no-data"' in html and "<svg" not in html
    # the units are still listed with zero cases, every community is a 零诉求 community
    _, streets = read_csv(tmp_path / "out" / "rates_street.csv")
    assert [(r["unit"], r["cases"], r["response_rate"], r["rank"]) for r in streets] == [
        ("st_a", "0", "", ""), ("st_b", "0", "", ""), ("st_c", "0", "", "")]
    _, communities = read_csv(tmp_path / "out" / "communities.csv")
    assert {r["status"] for r in communities} == {"zero"} and len(communities) == 4
    for name in ("trend.csv", "hot_spots.csv", "topics.csv"):
        assert read_csv(tmp_path / "out" / name)[1] == [], name


def test_rates_markdown_for_the_artifact(district):
    from flows.monthly_report import artifact_key, report_month
    from services.reports import rates_markdown
    md = rates_markdown(build("2026-11"))
    assert "| 1 | 学院路街道 (st_a) | 2 | 50.0% | 100.0% | 90.0% | 86.00 |" in md
    assert "全区: 办结 6 件, 响应率 83.3%, 解决率 83.3%, 满意率 80.0%" in md
    assert CITIZEN_NAME not in md and CITIZEN_PHONE not in md
    assert artifact_key("2026-11") == "rates-2026-11"
    assert report_month("2026-11") == "2026-11"
    with pytest.raises(ValueError):
        report_month("2026-13")
    assert re.fullmatch(r"\d{4}-\d{2}", report_month())


def test_previous_month_in_local_time(db):
    from services.trends import previous_month
    # Dec 1 01:00 in Beijing is still Nov 30 in UTC: the report made then is about November
    assert previous_month(at(2026, 12, 1, 1, 0)) == "2026-11"
    assert previous_month(at(2027, 1, 1, 2, 0)) == "2026-12"


# ---------------------------------------------------------------- CLI and API

def test_cli_writes_the_files(district, tmp_path):
    from typer.testing import CliRunner

    from hotline.cli import app
    runner = CliRunner()
    out = tmp_path / "cli-out"
    result = runner.invoke(app, ["report", "--month", "2026-11", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = result.output.split()
    assert printed == [str(out / name) for name in ("report.html", *CSV_FILES)]
    assert all(Path(p).is_file() for p in printed)
    assert "学院路街道" in (out / "report.html").read_text(encoding="utf-8")

    # default folder: <home>/reports/<month>/ of the --home given
    home = tmp_path / "other-home"
    result = runner.invoke(app, ["report", "--month", "2026-10", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert result.output.split()[0] == str(home.resolve() / "reports" / "2026-10" / "report.html")
    assert (home / "reports" / "2026-10" / "trend.csv").is_file()

    result = runner.invoke(app, ["report", "--month", "2026-13", "--out", str(out)])
    assert result.exit_code == 2 and "YYYY-MM" in result.output


def test_api_communities_and_topics(district):
    from fastapi.testclient import TestClient

    from api.main import create_app
    with TestClient(create_app()) as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = client.get("/api/metrics/communities", params={"month": "2026-11"}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["month"], body["zero"], body["low"], body["low_request_threshold"]) == ("2026-11", 1, 2, 2)
        assert [(c["community"], c["cases"], c["status"]) for c in body["communities"]] == [
            ("c_a3", 0, "zero"), ("c_a2", 1, "low"), ("c_b1", 2, "low"), ("c_a1", 8, "normal")]

        r = client.get("/api/metrics/topics", params={"month": "2026-11"}, headers=auth)
        assert r.status_code == 200, r.text
        a = {s["street"]: s for s in r.json()["streets"]}["st_a"]
        assert [t["category"] for t in a["growing"]] == ["sanitation", "noise"]
        assert [t["category"] for t in a["recurring"]] == ["noise", "illegal_parking", "sanitation"]

        for path in ("/api/metrics/communities", "/api/metrics/topics"):
            for bad in ("2026-13", "2026-1", "november", "2026-11-01", ""):
                r = client.get(path, params={"month": bad}, headers=auth)
                assert r.status_code == 422, (path, bad, r.text)
                detail = r.json()["detail"]
                assert [e["field"] for e in detail] == ["month"]
                assert "YYYY-MM" in detail[0]["message"], detail
            r = client.get(path, headers=auth)
            assert r.status_code == 422 and [e["field"] for e in r.json()["detail"]] == ["month"]
            assert client.get(path, params={"month": "2026-11"}).status_code == 401
            r = client.get(path, params={"month": "2026-11"}, headers={"Authorization": "Bearer not-a-token"})
            assert r.status_code == 401


# ---------------------------------------------------------------- charts

def test_line_chart_breaks_at_a_missing_month():
    from services.charts import rate_bars, rate_lines
    svg = rate_lines(["2026-01", "2026-02", "2026-03", "2026-04"],
                     [{"label": "全区", "values": [0.9, 0.95, None, 1.0], "emphasis": True}], "t")
    # 0.9, 0.95 joined; the gap; 1.0 a point alone
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3
    assert rate_lines(["2026-01"], [{"label": "x", "values": [None]}], "t") is None
    assert rate_bars([{"label": "a", "response_rate": None, "resolution_rate": None,
                       "satisfaction_rate": None}], "t") is None
