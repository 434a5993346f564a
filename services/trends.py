"""Request trends: 零诉求/低诉求社区 (communities with zero or few requests) and 每月一题 candidates (the problem
classes of a street that grew or recur most) for one month.

Both count cases by **reported_at** (受理 time) in the local calendar month (settings.timezone), whatever their
status, on the jurisdiction fields written at intake (`Case.community`, `Case.street`: unit codes). Definitions:
docs/evaluation.md, section "零诉求/低诉求社区 and 每月一题". The pure cores (`classify_communities`, `topic_candidates`)
take plain values; `communities_for_month` and `topics_for_month` read our DB and call them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from hotline.clock import local
from hotline.settings import get_settings
from models import Case, Unit
from models.units import UnitLevel
from services import policies
from services.evaluation import EvaluationPolicy, evaluation_policy, month_bounds

RECURRENCE_MONTHS = 3  # 每月一题: "recurring" looks at the month and the two before it


# ---------------------------------------------------------------- months

def shift_month(month: str, delta: int) -> str:
    """`month` (YYYY-MM) moved by `delta` months: shift_month("2026-01", -1) == "2025-12". ValueError if malformed."""
    month_bounds(month, "UTC")  # validates
    year, mon = int(month[:4]), int(month[5:])
    index = year * 12 + (mon - 1) + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_of(value: datetime) -> str:
    """The local calendar month (settings.timezone) of an aware or naive-UTC datetime."""
    return local(value).format("YYYY-MM")


def previous_month(at: datetime) -> str:
    """The month before the local month of `at` (the month a report made on the 1st is about)."""
    return shift_month(month_of(at), -1)


# ---------------------------------------------------------------- 零诉求/低诉求社区

@dataclass(frozen=True)
class CommunityRow:
    code: str
    name: str
    street: str | None  # the community's parent unit (街道/乡镇)


def classify_communities(communities: list[CommunityRow], counts: dict[str, int], threshold: int,
                         street_names: dict[str, str] | None = None) -> list[dict]:
    """Every community with its count and status: "zero" (0), "low" (1..threshold) or "normal"; fewest first,
    then by code."""
    street_names = street_names or {}
    rows = []
    for c in communities:
        n = counts.get(c.code, 0)
        status = "zero" if n == 0 else "low" if n <= threshold else "normal"
        rows.append({"community": c.code, "name": c.name, "street": c.street,
                     "street_name": street_names.get(c.street, c.street) if c.street else None,
                     "cases": n, "status": status})
    return sorted(rows, key=lambda r: (r["cases"], r["community"]))


def _registry(session: Session, level: UnitLevel) -> list[Unit]:
    return list(session.exec(select(Unit).where(Unit.level == level).order_by(Unit.code)))


def _reported_counts(session: Session, month: str, field) -> Counter:
    start, end = month_bounds(month, get_settings().timezone)
    rows = session.exec(select(field, func.count()).where(
        col(Case.reported_at) >= start, col(Case.reported_at) < end, col(field).is_not(None)).group_by(field))
    return Counter(dict(rows.all()))


def communities_for_month(session: Session, month: str, policy: EvaluationPolicy | None = None) -> dict:
    """零诉求/低诉求社区 of `month`: every community unit of the registry with its number of cases reported in the
    month (Case.community), and the zero and low counts."""
    policy = policy or evaluation_policy()
    streets = {u.code: u.name for u in _registry(session, UnitLevel.street)}
    communities = [CommunityRow(u.code, u.name, u.parent) for u in _registry(session, UnitLevel.community)]
    rows = classify_communities(communities, _reported_counts(session, month, Case.community),
                                policy.low_request_threshold, streets)
    return {"month": month, "timezone": get_settings().timezone,
            "low_request_threshold": policy.low_request_threshold,
            "zero": sum(1 for r in rows if r["status"] == "zero"),
            "low": sum(1 for r in rows if r["status"] == "low"),
            "communities": rows}


# ---------------------------------------------------------------- 每月一题

def topic_candidates(by_month: dict[str, Counter], month: str, n: int) -> dict[str, list[dict]]:
    """The candidates of one street. `by_month` maps a month to its category counts (months absent: no case).

    growing: categories with more cases in `month` than in the month before (growth = this − previous > 0), by
      growth, then ratio (this / previous; a category new this month has ratio null and comes before any
      ratio), then this month's count, then category code;
    recurring: categories with at least one case in `month`, by the number of months of the last three
      (month, −1, −2) with at least one case, then this month's count, then category code.
    Top `n` of each."""
    months = [shift_month(month, -i) for i in range(RECURRENCE_MONTHS)]  # month, previous, the one before
    this, before = by_month.get(months[0], Counter()), by_month.get(months[1], Counter())
    rows = []
    for category, count in this.items():
        if count <= 0:
            continue
        prev = before.get(category, 0)
        rows.append({"category": category, "cases": count, "previous": prev, "growth": count - prev,
                     "ratio": round(count / prev, 2) if prev else None,
                     "months_active": sum(1 for m in months if by_month.get(m, Counter()).get(category, 0) > 0)})
    growing = sorted((r for r in rows if r["growth"] > 0),
                     key=lambda r: (-r["growth"], r["ratio"] is not None, -(r["ratio"] or 0), -r["cases"],
                                    r["category"]))
    recurring = sorted(rows, key=lambda r: (-r["months_active"], -r["cases"], r["category"]))
    return {"growing": growing[:n], "recurring": recurring[:n]}


def topics_for_month(session: Session, month: str, policy: EvaluationPolicy | None = None,
                     labels: dict[str, str] | None = None) -> dict:
    """每月一题 candidates of `month` for every street of the registry (cases by Case.street and category, reported
    in the month and the two before). `labels`: category code → Chinese name (default policies/categories.yaml)."""
    policy = policy or evaluation_policy()
    tz = get_settings().timezone
    months = [shift_month(month, -i) for i in range(RECURRENCE_MONTHS)]
    start, end = month_bounds(months[-1], tz)[0], month_bounds(month, tz)[1]
    counts: dict[str, dict[str, Counter]] = {}
    for street, category, reported_at in session.exec(
            select(Case.street, Case.category, Case.reported_at).where(
                col(Case.reported_at) >= start, col(Case.reported_at) < end, col(Case.street).is_not(None))):
        counts.setdefault(street, {}).setdefault(month_of(reported_at), Counter())[category] += 1
    labels = policies.categories() if labels is None else labels
    streets = []
    for unit in _registry(session, UnitLevel.street):
        found = topic_candidates(counts.get(unit.code, {}), month, policy.topic_candidates)
        for rows in found.values():
            for r in rows:
                r["category_name"] = labels.get(r["category"], r["category"])
        streets.append({"street": unit.code, "name": unit.name,
                        "cases": sum(counts.get(unit.code, {}).get(month, Counter()).values()), **found})
    return {"month": month, "timezone": tz, "months": months, "top": policy.topic_candidates, "streets": streets}
