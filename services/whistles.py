"""吹哨报到 (CONTRACT 2c): a street or community summons units to a case; each reports in time or is escalated
to the district and marked; afterwards the whistle-blower rates each unit (1–5), which feeds their evaluation."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from hotline.clock import local, now
from models import Case, Summons, Unit, Whistle
from models.states import CaseStatus
from models.units import UnitLevel
from services import policies
from services.cases import Conflict, Invalid, NotFound, _escalate, lock_case, queue_delivery, record


def blow(*, session: Session, blower: Unit, case_id: int, units: list[str], kind: str, note: str | None) -> Whistle:
    if blower.level not in (UnitLevel.street, UnitLevel.community):
        raise Invalid("authorization", "only a street or a community can blow the whistle")
    case = lock_case(session, case_id)
    if blower.code not in (case.street, case.community, case.lead_unit):
        raise NotFound(f"case {case_id} not found")  # not in the blower's jurisdiction
    if case.status == CaseStatus.closed:
        raise Conflict("the case is closed", current=case.status)
    summoned = []
    for code in dict.fromkeys(units):
        unit = session.get(Unit, code)
        if unit is None:
            raise Invalid("units", f"unknown unit {code!r}")
        if code == blower.code:
            raise Invalid("units", "a unit cannot summon itself")
        summoned.append(unit)
    at = now()
    report_by = policies.whistle_policy().report_within[kind].after(at, policies.calendar())
    whistle = Whistle(case_id=case.id, blower=blower.code, kind=kind, note=note, created_at=at)
    session.add(whistle)
    session.flush()
    for unit in summoned:
        summons = Summons(whistle_id=whistle.id, unit=unit.code, report_by=report_by)
        session.add(summons)
        queue_delivery(session, unit, "whistle.summoned", {
            "whistle_id": str(whistle.id), "case_number": case.number, "kind": kind, "note": note,
            "blower": blower.code, "category": case.category, "location": case.location,
            "report_by": local(report_by).isoformat(),
            "report_url": f"/api/whistles/{whistle.id}/report"}, key=f"whistle{whistle.id}-{unit.code}", case=case)
    record(session, case, "whistle.blown", f"{blower.name} 吹哨 ({kind}): {', '.join(u.name for u in summoned)}",
           actor=blower.code, whistle_id=whistle.id, whistle_kind=kind, units=[u.code for u in summoned],
           blown_at=local(at).isoformat(), report_by=local(report_by).isoformat())
    return whistle


def report(*, session: Session, unit: Unit, whistle_id: int, note: str | None) -> dict:
    whistle = session.get(Whistle, whistle_id)
    summons = session.exec(select(Summons).where(Summons.whistle_id == whistle_id, Summons.unit == unit.code)).first() \
        if whistle else None
    if summons is None:
        raise NotFound(f"whistle {whistle_id} not found")
    case = lock_case(session, whistle.case_id)
    session.refresh(summons)
    if summons.reported_at is not None:
        return {"reported_at": local(summons.reported_at).isoformat(), "on_time": summons.reported_at <= summons.report_by,
                "duplicate": True}
    summons.reported_at, summons.report_note = now(), note
    session.add(summons)
    on_time = summons.reported_at <= summons.report_by
    record(session, case, "whistle.reported", f"{unit.name} 报到" + ("" if on_time else " (超时)"),
           actor=unit.code, whistle_id=whistle_id, on_time=on_time)
    return {"reported_at": local(summons.reported_at).isoformat(), "on_time": on_time, "duplicate": False}


def rate(*, session: Session, blower: Unit, whistle_id: int, ratings: list[dict]) -> int:
    whistle = session.get(Whistle, whistle_id)
    if whistle is None or whistle.blower != blower.code:
        raise NotFound(f"whistle {whistle_id} not found")
    case = lock_case(session, whistle.case_id)
    summonses = {s.unit: s for s in session.exec(select(Summons).where(Summons.whistle_id == whistle_id)).all()}
    pending = [u for u, s in summonses.items() if s.reported_at is None and not s.lapsed]
    if pending:
        raise Conflict(f"still waiting for {pending} to report", current="summoning")
    for i, rating in enumerate(ratings):
        if rating["unit"] not in summonses:
            raise Invalid(f"ratings.{i}.unit", f"{rating['unit']!r} was not summoned by this whistle")
    for rating in ratings:
        summons = summonses[rating["unit"]]
        summons.score, summons.rating_note = rating["score"], rating.get("note")
        session.add(summons)
    record(session, case, "whistle.rated", "吹哨评价: " + ", ".join(f"{r['unit']} {r['score']}" for r in ratings),
           actor=blower.code, whistle_id=whistle_id, ratings={r["unit"]: r["score"] for r in ratings})
    return len(ratings)


def detail(session: Session, whistle_id: int) -> dict | None:
    whistle = session.get(Whistle, whistle_id)
    if whistle is None:
        return None
    summonses = session.exec(select(Summons).where(Summons.whistle_id == whistle_id).order_by(col(Summons.id))).all()
    return {"id": str(whistle.id), "case_id": str(whistle.case_id), "blower": whistle.blower, "kind": whistle.kind,
            "note": whistle.note, "created_at": local(whistle.created_at).isoformat(),
            "units": [{"unit": s.unit, "report_by": local(s.report_by).isoformat(),
                       "reported_at": local(s.reported_at).isoformat() if s.reported_at else None,
                       "lapsed": s.lapsed, "score": s.score, "rating_note": s.rating_note} for s in summonses]}


def escalate_missed_reports(session: Session, at: datetime, limit: int = 500) -> int:
    """Summoned units that did not report in time: marked, and escalated to the district (deadline watch)."""
    missed = session.exec(select(Summons).where(
        Summons.reported_at.is_(None), Summons.lapsed == False, Summons.report_by <= at  # type: ignore  # noqa: E712
    ).limit(limit)).all()
    for summons in missed:
        whistle = session.get(Whistle, summons.whistle_id)
        case = lock_case(session, whistle.case_id)
        summons.lapsed = True
        session.add(summons)
        _escalate(session, case, None, "whistle_not_reported", to_unit=case.district, from_unit=summons.unit,
                  whistle_id=whistle.id)
    return len(missed)
