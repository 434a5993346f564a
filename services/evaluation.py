"""考评: the monthly three rates (三率: 响应率, 解决率, 满意率), the composite score and the ranking of units.

The definitions are written down in docs/evaluation.md; this module computes exactly those. `evaluate` is the pure
core (plain rows in, one dict per unit out); `rates_for_month` reads the rows from our DB and calls it. The weights
come from policies/evaluation.yaml (`evaluation_policy`), read when used like every policy file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, model_validator
from sqlmodel import Session, col, select

from hotline.clock import local, stored_utc
from hotline.settings import get_settings
from models import Case, CaseStatus, Summons, TimelineEntry, Unit, Whistle
from services.policies import PolicyError, _load, categories

LEVELS = ("street", "department", "community", "utility")
SATISFACTION_VALUES = ("satisfied", "basically_satisfied", "unsatisfied")
EXCLUDED_OUTCOMES = ("closed_by_supervisor",)  # withdrawn / closed by a decision: not the unit's handling
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


# ---------------------------------------------------------------- policy

class Weights(BaseModel):
    response: float = Field(0.2, ge=0, le=1)
    resolution: float = Field(0.4, ge=0, le=1)
    satisfaction: float = Field(0.4, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.response + self.resolution + self.satisfaction
        if abs(total - 1) > 1e-9:
            raise ValueError(f"response + resolution + satisfaction must be 1, not {total:g}")
        return self


class WhistleBlend(BaseModel):
    weight: float = Field(0.0, ge=0, le=1)
    levels: list[str] = Field(default_factory=lambda: ["department", "utility"])


class EvaluationPolicy(BaseModel):
    weights: Weights = Field(default_factory=Weights)
    basically_satisfied_weight: float = Field(0.8, ge=0, le=1)
    whistle: WhistleBlend = Field(default_factory=WhistleBlend)
    excluded_categories: list[str] = Field(default_factory=list)
    # 零诉求/低诉求社区: a community with at most this many cases reported in the month is "low" (0 is "zero")
    low_request_threshold: int = Field(2, ge=0)
    # 每月一题: how many candidate categories per street and per list (growing, recurring)
    topic_candidates: int = Field(3, ge=1)


def evaluation_policy(policy_dir: Path | None = None) -> EvaluationPolicy:
    """policies/evaluation.yaml, validated (PolicyError with file and field); missing file: the defaults."""
    policy = _load("evaluation.yaml", EvaluationPolicy, policy_dir, optional=True)
    unknown = set(policy.excluded_categories) - set(categories(policy_dir))
    if unknown:
        raise PolicyError(f"evaluation.yaml: excluded_categories: unknown categories {sorted(unknown)}")
    return policy


# ---------------------------------------------------------------- plain rows and the pure core

@dataclass(frozen=True)
class UnitRow:
    code: str
    name: str
    level: str


@dataclass(frozen=True)
class CaseRow:
    lead_unit: str | None
    closed_at: datetime  # aware, or naive UTC as stored
    category: str = "uncategorised"
    responded_in_time: bool | None = None
    resolved: bool | None = None
    satisfaction: str | None = None
    follow_up_outcome: str | None = None


@dataclass(frozen=True)
class RatingRow:
    unit: str
    score: int  # 1..5
    whistle_at: datetime  # when the whistle was blown: the month it counts in


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of the calendar month in `tz`, as aware UTC datetimes. ValueError for a malformed month."""
    m = _MONTH.match(month or "")
    if not m:
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    zone = ZoneInfo(tz)
    start = datetime(year, mon, 1, tzinfo=zone)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def _in(value: datetime | None, bounds: tuple[datetime, datetime]) -> bool:
    return value is not None and bounds[0] <= stored_utc(value) < bounds[1]


def citizen_answered(case: Case | CaseRow) -> bool:
    """Whether the citizen's answer is on record (`satisfaction` is only ever written from a follow-up answer):
    then `resolved` is the citizen's word; otherwise (not reached, anonymous) the unit's own report."""
    return case.satisfaction is not None


def counts(case: CaseRow, policy: EvaluationPolicy) -> bool:
    """Whether a closed case is evaluated at all (before attribution to its unit)."""
    return (case.lead_unit is not None and case.follow_up_outcome not in EXCLUDED_OUTCOMES
            and case.category not in policy.excluded_categories)


def _rate(numerator: float, denominator: int) -> float | None:
    """numerator / denominator; an empty denominator is "no data" (None), not 0."""
    return numerator / denominator if denominator else None


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


def _weighted(rates: dict[str, float | None], weights: Weights) -> float | None:
    """The weighted mean of the rates that have data, the weights renormalised over them; None when no rate with
    a weight above 0 has data (e.g. weights 0/0/1 and no satisfaction answer)."""
    parts = [(getattr(weights, name), rate) for name, rate in rates.items() if rate is not None]
    total = sum(weight for weight, _ in parts)
    return sum(weight * rate for weight, rate in parts) / total if total > 0 else None


def evaluate(month: str, level: str, units: list[UnitRow], cases: list[CaseRow], ratings: list[RatingRow],
             policy: EvaluationPolicy, tz: str = "Asia/Shanghai") -> list[dict]:
    """The rates, score and rank of every unit of `level` for `month`: ranked units first (rank 1, 2, ...), then
    the units without a score, by code: those without an attributable case (rates, score and rank null) and those
    whose cases give no data to any weighted rate (score and rank null)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    bounds = month_bounds(month, tz)
    sat_value = {"satisfied": 1.0, "basically_satisfied": policy.basically_satisfied_weight, "unsatisfied": 0.0}
    w = policy.weights
    blend = policy.whistle.weight if level in policy.whistle.levels else 0.0

    by_unit: dict[str, list[CaseRow]] = {}
    for case in cases:
        if _in(case.closed_at, bounds) and counts(case, policy):
            by_unit.setdefault(case.lead_unit, []).append(case)
    scores: dict[str, list[int]] = {}
    for r in ratings:
        if _in(r.whistle_at, bounds) and 1 <= r.score <= 5:
            scores.setdefault(r.unit, []).append(r.score)

    out = []
    for unit in sorted((u for u in units if u.level == level), key=lambda u: u.code):
        mine = by_unit.get(unit.code, [])
        unit_scores = scores.get(unit.code, [])
        whistle = round((sum(unit_scores) / len(unit_scores) - 1) / 4, 4) if unit_scores else None
        row = {"unit": unit.code, "name": unit.name, "level": unit.level, "cases": len(mine),
               "responded": None, "resolved": None, "satisfaction_answers": 0,
               "response_rate": None, "resolution_rate": None, "satisfaction_rate": None,
               "whistle_ratings": len(unit_scores), "whistle_score": whistle, "score": None, "rank": None}
        if mine:
            n = len(mine)
            responded = sum(1 for c in mine if c.responded_in_time is True)
            resolved = sum(1 for c in mine if c.resolved is True)
            # the citizen's answer on record: every answered follow-up, and a 重办 case whose later round did not
            # reach the citizen (the earlier answer stands); `satisfaction` is only ever written from an answer
            answers = [sat_value[c.satisfaction] for c in mine if c.satisfaction in sat_value]
            rates = {"response": _rate(responded, n), "resolution": _rate(resolved, n),
                     "satisfaction": _rate(sum(answers), len(answers))}
            base = _weighted(rates, w)
            if base is not None and blend and whistle is not None:
                base = (1 - blend) * base + blend * whistle
            row.update(responded=responded, resolved=resolved, satisfaction_answers=len(answers),
                       **{f"{k}_rate": _round(v, 4) for k, v in rates.items()},
                       score=_round(100 * base, 2) if base is not None else None)
        out.append(row)

    ranked = sorted((r for r in out if r["score"] is not None), key=lambda r: (-r["score"], -r["cases"], r["unit"]))
    for i, row in enumerate(ranked, start=1):
        row["rank"] = i
    return ranked + [r for r in out if r["score"] is None]


# ---------------------------------------------------------------- from the DB

def rates_for_month(session: Session, month: str, level: str, policy: EvaluationPolicy | None = None) -> list[dict]:
    """`evaluate` on our record: the cases closed in `month` (local calendar), their lead unit at close and the
    fields `evaluate_and_close` wrote; the whistle ratings of the month's whistles."""
    tz = get_settings().timezone
    start, end = month_bounds(month, tz)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    policy = policy or evaluation_policy()
    lo, hi = start, end  # aware UTC: the column type stores and compares UTC on SQLite and Postgres alike
    units = [UnitRow(u.code, u.name, str(u.level)) for u in session.exec(select(Unit).where(Unit.level == level))]
    codes = [u.code for u in units]
    cases = [CaseRow(lead_unit=c.lead_unit, closed_at=c.closed_at, category=c.category,
                     responded_in_time=c.responded_in_time, resolved=c.resolved, satisfaction=c.satisfaction,
                     follow_up_outcome=c.follow_up_outcome)
             for c in session.exec(select(Case).where(
                 Case.status == CaseStatus.closed, col(Case.closed_at).is_not(None), col(Case.closed_at) >= lo,
                 col(Case.closed_at) < hi, col(Case.lead_unit).in_(codes)))] if codes else []
    ratings = [RatingRow(unit, score, at) for unit, score, at in session.exec(
        select(Summons.unit, Summons.score, Whistle.created_at).join(Whistle, Whistle.id == Summons.whistle_id)
        .where(col(Summons.score).is_not(None), col(Summons.unit).in_(codes),
               col(Whistle.created_at) >= lo, col(Whistle.created_at) < hi))] if codes else []
    return evaluate(month, level, units, cases, ratings, policy, tz)


# ---------------------------------------------------------------- from the timeline alone

CLOSING_ENTRIES = ("closed", "imported")  # the one timeline entry per case that carries its evaluation record


def evaluation_record(case: Case, lead_level: str | None) -> dict:
    """What the evaluation reads about a closed case, written into its closing timeline entry (`closed` by
    `evaluate_and_close`, `imported` for a historic case): with it the rates are reproducible from the timeline."""
    return {"lead_unit": case.lead_unit, "lead_level": lead_level, "category": case.category,
            "closed_at": local(case.closed_at).isoformat() if case.closed_at else None,
            "responded_in_time": case.responded_in_time, "completed_in_time": case.completed_in_time,
            "resolved": case.resolved, "resolved_from": _resolved_from(case), "satisfaction": case.satisfaction,
            "follow_up": case.follow_up_outcome}


def _resolved_from(case: Case) -> str | None:
    """Whose word `resolved` is: the citizen's answer, or the unit's report (not reached, anonymous: flagged)."""
    if citizen_answered(case):
        return "citizen"
    return "unit_report" if case.resolved is not None else None


def _case_row(data: dict) -> CaseRow:
    return CaseRow(lead_unit=data["lead_unit"], closed_at=datetime.fromisoformat(data["closed_at"]),
                   category=data["category"], responded_in_time=data["responded_in_time"], resolved=data["resolved"],
                   satisfaction=data["satisfaction"], follow_up_outcome=data["follow_up"])


def rates_from_timeline(session: Session, month: str, level: str,
                        policy: EvaluationPolicy | None = None) -> list[dict]:
    """`evaluate` rebuilt from timeline entries only, without reading cases, orders or whistles: each case from
    the evaluation record of its closing entry, each whistle rating from the `whistle.rated` entries (the last
    score per whistle and unit) in the month of its `whistle.blown` entry. Only the list of the level's units
    (code, name) comes from the registry. It answers what `rates_for_month` answers on the same record (an audit:
    it reads every closing entry; entries written before they carried the record are skipped)."""
    tz = get_settings().timezone
    month_bounds(month, tz)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    policy = policy or evaluation_policy()
    units = [UnitRow(u.code, u.name, str(u.level)) for u in session.exec(select(Unit).where(Unit.level == level))]
    cases = [_case_row(e.data) for e in session.exec(
        select(TimelineEntry).where(col(TimelineEntry.kind).in_(CLOSING_ENTRIES))) if e.data.get("closed_at")]
    blown: dict[int, datetime] = {}
    scores: dict[tuple[int, str], int] = {}
    for e in session.exec(select(TimelineEntry).where(col(TimelineEntry.kind).in_(("whistle.blown", "whistle.rated")))
                          .order_by(col(TimelineEntry.id))):
        if e.kind == "whistle.blown" and e.data.get("blown_at"):
            blown[e.data["whistle_id"]] = datetime.fromisoformat(e.data["blown_at"])
        elif e.kind == "whistle.rated":
            scores.update({(e.data["whistle_id"], unit): score for unit, score in e.data["ratings"].items()})
    ratings = [RatingRow(unit, score, blown[wid]) for (wid, unit), score in scores.items() if wid in blown]
    return evaluate(month, level, units, cases, ratings, policy, tz)


DISTRICT_WIDE = "*"


def district_rates(session: Session, month: str, policy: EvaluationPolicy | None = None) -> dict:
    """全区 (district-wide) three rates for `month`: every case closed in the month with a lead unit, whatever the
    level of that unit (district-level leads included), with the same exclusions and the same formulas as a unit's
    rates (docs/evaluation.md). No score and no rank: the district is not ranked against anything."""
    tz = get_settings().timezone
    start, end = month_bounds(month, tz)
    policy = policy or evaluation_policy()
    cases = [CaseRow(lead_unit=DISTRICT_WIDE, closed_at=c.closed_at, category=c.category,
                     responded_in_time=c.responded_in_time, resolved=c.resolved, satisfaction=c.satisfaction,
                     follow_up_outcome=c.follow_up_outcome)
             for c in session.exec(select(Case).where(
                 Case.status == CaseStatus.closed, col(Case.closed_at).is_not(None), col(Case.closed_at) >= start,
                 col(Case.closed_at) < end, col(Case.lead_unit).is_not(None)))]
    # one pseudo-unit holding every case; the level only selects it (no whistle blend is applied to "street")
    row = evaluate(month, "street", [UnitRow(DISTRICT_WIDE, "全区", "street")], cases, [], policy, tz)[0]
    return {k: row[k] for k in ("cases", "responded", "resolved", "satisfaction_answers", "response_rate",
                                "resolution_rate", "satisfaction_rate")}
