"""月度报告: one month's report for people to read (report.html) and the same numbers as CSV files.

`build_report` gathers the numbers from our DB: the three rates (三率) of every level (services.evaluation), the
district-wide rates, a six-month trend (全区 and per street), the hot spots of repeated requests (重复诉求,
services.repeats), the zero/low-request communities (零诉求/低诉求社区) and the 每月一题 candidates
(services.trends). `render_html` turns it into one self-contained page (inline CSS, inline SVG charts, no
JavaScript); `write_report` writes the page and the CSV files (UTF-8 with BOM, for Excel) into a folder.
No citizen name or phone is read into the report.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from hotline.clock import local, now
from hotline.db import read_scope
from hotline.settings import get_settings
from models import Case, Unit
from models.units import UnitLevel
from notifications.payloads import templates
from services import charts, policies
from services.evaluation import (LEVELS, EvaluationPolicy, district_rates, evaluation_policy, month_bounds,
                                 rates_for_month)
from services.trends import communities_for_month, shift_month, topics_for_month

TREND_MONTHS = 6
LEVEL_LABELS = {"street": "街道/乡镇", "department": "委办局", "community": "社区/村", "utility": "公共服务企业"}
RATE_COLUMNS = ["rank", "unit", "name", "level", "cases", "responded", "resolved", "satisfaction_answers",
                "response_rate", "resolution_rate", "satisfaction_rate", "whistle_ratings", "whistle_score", "score"]
TREND_COLUMNS = ["month", "scope", "name", "cases", "response_rate", "resolution_rate", "satisfaction_rate"]
HOT_SPOT_COLUMNS = ["street", "street_name", "community", "community_name", "category", "category_name", "cases",
                    "citizens", "case_numbers", "first_at", "last_at"]
COMMUNITY_COLUMNS = ["community", "name", "street", "street_name", "cases", "status"]
TOPIC_COLUMNS = ["street", "street_name", "list", "position", "category", "category_name", "cases", "previous",
                 "growth", "ratio", "months_active"]
DISTRICT_SCOPE = "district"  # the scope of the 全区 rows in trend.csv


@dataclass
class MonthlyReport:
    month: str
    timezone: str
    generated_at: datetime
    district_name: str
    reported: int  # cases reported (受理) in the month
    district: dict  # 全区 three rates of the cases closed in the month
    levels: dict[str, list[dict]]  # level -> rates_for_month rows
    trend_months: list[str]
    trend: list[dict]  # rows of TREND_COLUMNS, only where cases > 0
    hot_spots: list[dict]
    communities: dict
    topics: dict
    policy: EvaluationPolicy = field(default_factory=EvaluationPolicy)

    @property
    def empty(self) -> bool:
        """Nothing reported and nothing closed in the month."""
        return self.reported == 0 and self.district["cases"] == 0


# ---------------------------------------------------------------- gathering

def _reported(session: Session, month: str) -> int:
    start, end = month_bounds(month, get_settings().timezone)
    return session.exec(select(func.count()).select_from(Case).where(
        col(Case.reported_at) >= start, col(Case.reported_at) < end)).one()


def _rates(row: dict) -> dict:
    return {k: row[k] for k in ("cases", "response_rate", "resolution_rate", "satisfaction_rate")}


def _hot_spot_row(spot, names: dict[str, str], labels: dict[str, str]) -> dict:
    def when(value):
        return local(value).format("YYYY-MM-DD HH:mm") if value else None
    return {"street": spot.street, "street_name": names.get(spot.street, spot.street) if spot.street else None,
            "community": spot.community,
            "community_name": names.get(spot.community, spot.community) if spot.community else None,
            "category": spot.category, "category_name": labels.get(spot.category, spot.category),
            "cases": spot.cases, "citizens": spot.citizens, "case_numbers": list(spot.case_numbers),
            "first_at": when(spot.first_at), "last_at": when(spot.last_at)}


def build_report(session: Session, month: str, policy: EvaluationPolicy | None = None) -> MonthlyReport:
    """All the numbers of `month` (YYYY-MM, local calendar). ValueError for a malformed month."""
    settings = get_settings()
    start, end = month_bounds(month, settings.timezone)
    policy = policy or evaluation_policy()
    labels = policies.categories()
    units = list(session.exec(select(Unit)))
    names = {u.code: u.name for u in units}
    districts = [u.name for u in units if u.level == UnitLevel.district]

    levels = {level: rates_for_month(session, month, level, policy) for level in LEVELS}
    months = [shift_month(month, -i) for i in reversed(range(TREND_MONTHS))]
    trend, district = [], None
    for m in months:
        whole = district_rates(session, m, policy)
        streets = levels["street"] if m == month else rates_for_month(session, m, "street", policy)
        if m == month:
            district = whole
        if whole["cases"]:
            trend.append({"month": m, "scope": DISTRICT_SCOPE, "name": "全区", **_rates(whole)})
        trend += [{"month": m, "scope": r["unit"], "name": r["name"], **_rates(r)}
                  for r in sorted(streets, key=lambda r: r["unit"]) if r["cases"]]

    from services import repeats  # imported when used: the flows' serve process does not depend on it to start
    spots = [_hot_spot_row(s, names, labels) for s in repeats.hot_spots(session, start, end)]
    return MonthlyReport(
        month=month, timezone=settings.timezone, generated_at=now(),
        district_name=districts[0] if len(districts) == 1 else "", reported=_reported(session, month),
        district=district, levels=levels, trend_months=months, trend=trend, hot_spots=spots,
        communities=communities_for_month(session, month, policy),
        topics=topics_for_month(session, month, policy, labels), policy=policy)


# ---------------------------------------------------------------- charts and the page

def street_bars(report: MonthlyReport):
    rows = [{"label": r["name"], "note": f"办结 {r['cases']} 件", **_rates(r)} for r in report.levels["street"]
            if r["cases"]]
    return charts.rate_bars(rows, f"{report.month} 各街道(乡镇)三率")


def trend_lines(report: MonthlyReport) -> list[tuple[str, object]]:
    """One line chart per rate: 全区 (thick) and every street with a value in the six months."""
    out = []
    by_scope: dict[str, dict[str, dict]] = {}
    scope_names: dict[str, str] = {}
    for row in report.trend:
        by_scope.setdefault(row["scope"], {})[row["month"]] = row
        scope_names[row["scope"]] = row["name"]
    scopes = [DISTRICT_SCOPE] + sorted(s for s in by_scope if s != DISTRICT_SCOPE)
    for key, name, _colour in charts.RATE_SERIES:
        series = [{"label": scope_names.get(scope, "全区"), "emphasis": scope == DISTRICT_SCOPE,
                   "values": [by_scope.get(scope, {}).get(m, {}).get(key) for m in report.trend_months]}
                  for scope in scopes]
        series = [s for s in series if any(v is not None for v in s["values"])]
        title = f"近{TREND_MONTHS}个月{name}趋势 ({report.trend_months[0]} 至 {report.trend_months[-1]})"
        out.append((name, charts.rate_lines(report.trend_months, series, title)))
    return out


def render_html(report: MonthlyReport) -> str:
    ranked = {level: [r for r in rows if r["cases"]] for level, rows in report.levels.items()}
    idle = {level: [r for r in rows if not r["cases"]] for level, rows in report.levels.items()}
    communities = report.communities["communities"]
    return templates().get_template("report.html").render(
        r=report, month_label=f"{report.month[:4]}年{int(report.month[5:])}月", level_labels=LEVEL_LABELS,
        ranked=ranked, idle=idle, pct=charts.percent, street_chart=street_bars(report),
        trend_charts=trend_lines(report),
        district_trend=[row for row in report.trend if row["scope"] == DISTRICT_SCOPE],
        flagged=[c for c in communities if c["status"] != "normal"],
        normal_count=sum(1 for c in communities if c["status"] == "normal"),
        topic_streets=[s for s in report.topics["streets"] if s["growing"] or s["recurring"]],
        generated=local(report.generated_at).format("YYYY-MM-DD HH:mm"))


# ---------------------------------------------------------------- CSV and files

def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return value


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    """UTF-8 with a byte-order mark (Excel then reads the Chinese names right); empty cell for null."""
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def csv_tables(report: MonthlyReport) -> dict[str, tuple[list[str], list[dict]]]:
    """File name -> (columns, rows): the same numbers as the page."""
    tables = {f"rates_{level}.csv": (RATE_COLUMNS, rows) for level, rows in report.levels.items()}
    topics = [{"street": s["street"], "street_name": s["name"], "list": which, "position": i, **row}
              for s in report.topics["streets"] for which in ("growing", "recurring")
              for i, row in enumerate(s[which], start=1)]
    tables.update({"trend.csv": (TREND_COLUMNS, report.trend),
                   "hot_spots.csv": (HOT_SPOT_COLUMNS, report.hot_spots),
                   "communities.csv": (COMMUNITY_COLUMNS, report.communities["communities"]),
                   "topics.csv": (TOPIC_COLUMNS, topics)})
    return tables


def write_report(report: MonthlyReport, out_dir: Path) -> list[Path]:
    """report.html and the CSV files in `out_dir` (created); the paths written, the page first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return [page] + [write_csv(out_dir / name, columns, rows)
                     for name, (columns, rows) in csv_tables(report).items()]


def default_out_dir(month: str) -> Path:
    return get_settings().home / "reports" / month


def make_report(month: str, out_dir: Path | None = None) -> list[Path]:
    """Build `month`'s report from our DB and write it (default folder: <home>/reports/<month>/)."""
    with read_scope() as session:
        report = build_report(session, month)
    return write_report(report, out_dir or default_out_dir(month))


# ---------------------------------------------------------------- the rates table as Markdown (Prefect artifact)

def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _score(score: float | None) -> str:
    return "—" if score is None else f"{score:.2f}"  # None: no weighted rate has data (docs/evaluation.md)


def rates_markdown(report: MonthlyReport) -> str:
    """The rates tables of every level as Markdown: units and numbers only, no citizen data."""
    d = report.district
    lines = [f"# 考评三率 {report.month} ({report.timezone})", "",
             f"全区: 办结 {d['cases']} 件, 响应率 {charts.percent(d['response_rate'])}, "
             f"解决率 {charts.percent(d['resolution_rate'])}, 满意率 {charts.percent(d['satisfaction_rate'])}; "
             f"本月受理 {report.reported} 件.", ""]
    for level, rows in report.levels.items():
        ranked = [r for r in rows if r["cases"]]
        lines += [f"## {LEVEL_LABELS[level]} ({level})", ""]
        if ranked:
            lines += ["| 排名 | 单位 | 件数 | 响应率 | 解决率 | 满意率 | 得分 |", "|---:|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['rank'] or '—'} | {_md(r['name'])} ({_md(r['unit'])}) | {r['cases']} | "
                      f"{charts.percent(r['response_rate'])} | {charts.percent(r['resolution_rate'])} | "
                      f"{charts.percent(r['satisfaction_rate'])} | {_score(r['score'])} |" for r in ranked]
        else:
            lines.append("本月无数据.")
        idle = len(rows) - len(ranked)
        if idle:
            lines += ["", f"本月无办结诉求的单位: {idle} 个."]
        lines.append("")
    return "\n".join(lines)
